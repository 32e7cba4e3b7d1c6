"""The agent's non-parametric half, persisted in one SQLite database per agent home.

- `memory.db.AgentDB`: the database (tasks, episodes, steps, memory entries, tools); WAL, foreign
  keys, versioned schema with forward migrations, purge + VACUUM.
- `memory.episodic.EpisodicMemory`: bounded kNN memory of (state, goal) keys -> action, acted-on
  patch embedding, return; a faiss index (`memory.index.KeyIndex`) cached next to the database.
- `memory.tools.ToolLibrary`: tools mined from successful episodes, their review status and
  statistics, and resolving a tool's targets on a new screen.
- `memory.bench`: `squirrel bench memory`.

Imports nothing from agent, trainer or gui (import-linter contract in pyproject.toml).
"""
