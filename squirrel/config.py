"""Parse an entry point's config dataclass from argv (tyro: field docstrings become --help)."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def parse(cls: type[T], argv: list[str], prog: str) -> T:
    import tyro

    return tyro.cli(cls, args=argv, prog=prog)
