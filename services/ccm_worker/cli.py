"""Subcommands contributed by the streaming service (filled in by the worker)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_commands(sub: Any, config_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register the service's subcommands on the ``ccm-tally`` parser."""
