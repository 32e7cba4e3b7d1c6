"""The `squirrel` command: a thin face that dispatches to the agent's packages."""
