"""Task sources beyond the playground: user-defined TOML tasks (and later MiniWoB++)."""
