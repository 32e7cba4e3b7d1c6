"""Playground: the built-in GUI task apps (a Qt program the agent acts on; it runs in its own process)."""
