"""Argument parsing and process exit for the stage scripts."""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Callable, Iterator, NoReturn, Sequence

from tokenskip.core.errors import UsageError


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows a flag's default when it has a meaningful one (not None/False, and not a switch's: a
    `--no-x` switch's default True says nothing a user can act on), and keeps epilogs as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        switch = action.nargs == 0
        if not switch and action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def flag_key(flag: str) -> str:
    """What two spellings of one flag share: `--max_new_tokens` and `--max-new-tokens` are one flag."""
    return flag.replace("_", "-")


class StageParser(argparse.ArgumentParser):
    """An ArgumentParser whose mistakes (unknown or malformed flags) become one-line UsageErrors, and
    which takes every long flag with `_` or `-` between its words (the original scripts mixed them:
    `--use_adapter`, `--data-type`); `--help` shows the spelling each flag was defined with."""

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)  # a typo must not silently pick another flag
        super().__init__(**kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")

    def spellings(self) -> dict[str, str]:
        """Each long flag's key (flag_key) -> the spelling it was defined with."""
        return {flag_key(flag): flag for flag in self._option_string_actions if flag.startswith("--")}

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        canonical = self.spellings()
        out = []
        for index, arg in enumerate(args):
            if arg == "--":  # what follows is positional, whatever it looks like
                out += args[index:]
                break
            if arg.startswith("--") and arg.split("=", 1)[0] not in self._option_string_actions:
                name, equals, value = arg.partition("=")
                arg = canonical.get(flag_key(name), name) + equals + value
            out.append(arg)
        return super().parse_known_args(out, namespace)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn what goes wrong in a stage into a one-line message: user errors exit 2, Ctrl-C 130.

    The entry scripts import their stage inside this block, so that a Python lacking a package the
    stage imports at its top (a bare `python3` where .venv is missing) gets the one-line message
    rather than a traceback.
    """
    try:
        yield
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except ModuleNotFoundError as exc:
        if not exc.name or exc.name.split(".")[0] == "tokenskip":
            raise
        print(f"error: the package {exc.name.split('.')[0]!r} is not installed in {sys.prefix}; "
              "run `make setup` (or `make setup-vllm` for .venv-vllm), or pip install it there", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)


def run_cli(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> None:
    """Run a stage's `main` as its script would: user errors become one line and exit code 2."""
    with user_errors():
        main(argv)
