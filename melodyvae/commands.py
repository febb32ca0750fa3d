"""Batch generation, audio and scoring subcommands (generate, interpolate, vary, encode,
decode, score, render, transcribe)."""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Declare this module's subcommands on the main parser."""
