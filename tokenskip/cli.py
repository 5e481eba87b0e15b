"""Argument parsing and process exit for the stage scripts."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn, Sequence

from tokenskip.errors import UsageError


class StageParser(argparse.ArgumentParser):
    """An ArgumentParser whose mistakes (unknown or malformed flags) become one-line UsageErrors."""

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        kwargs.setdefault("allow_abbrev", False)  # a typo must not silently pick another flag
        super().__init__(**kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def run_cli(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> None:
    """Run a stage's `main`, turning user errors into a one-line message and exit code 2."""
    try:
        main(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
