"""One-command demo (filled in below)."""

from __future__ import annotations

import argparse


def add_demo_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patients", type=int, default=200)


def run_demo(args: argparse.Namespace) -> int:
    raise SystemExit("demo: not yet")
