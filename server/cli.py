"""The ``melodyvae serve`` subcommand."""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Declare ``serve`` on the main parser."""
