"""Every flag of every script: help text, one spelling shown, both spellings (`_` and `-`) accepted."""

from __future__ import annotations

import argparse

import pytest

from testkit.parsers import script_parsers
from tokenskip.core.cli import flag_key

PARSERS = script_parsers(subcommands=True)


@pytest.mark.parametrize("script", sorted(PARSERS))
def test_every_flag_has_help_and_one_key(script):
    parser = PARSERS[script]
    keys: dict[str, str] = {}
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        assert action.help and action.help != argparse.SUPPRESS and action.help.strip(), \
            f"{script} {action.option_strings[0]} has no help text"
        for flag in action.option_strings:
            if flag.startswith("--"):
                # two flags that differ only in _ vs - would make the alias ambiguous
                assert keys.setdefault(flag_key(flag), flag) == flag, f"{script}: {flag} and {keys[flag_key(flag)]}"


def _other_spelling(flag: str) -> str:
    body = flag[2:]
    return "--" + (body.replace("_", "-") if "_" in body else body.replace("-", "_"))


@pytest.mark.parametrize("script", sorted(PARSERS))
def test_every_long_flag_takes_both_spellings(script):
    parser = PARSERS[script]
    for action in parser._actions:
        for flag in action.option_strings:
            if not flag.startswith("--") or ("_" not in flag[2:] and "-" not in flag[2:]) or flag == "--help":
                continue
            alias = _other_spelling(flag)
            canonical = parser.spellings()[flag_key(alias)]
            assert canonical == flag
            # the normalisation parse_known_args applies (a full parse needs each script's required flags)
            seen = []
            original = argparse.ArgumentParser.parse_known_args

            def spy(self, args=None, namespace=None):
                seen.append(list(args))
                raise SystemExit(0)

            argparse.ArgumentParser.parse_known_args = spy
            try:
                with pytest.raises(SystemExit):
                    parser.parse_known_args([alias, "x"])
                with pytest.raises(SystemExit):
                    parser.parse_known_args([f"{alias}=x"])
            finally:
                argparse.ArgumentParser.parse_known_args = original
            assert seen == [[flag, "x"], [f"{flag}=x"]]


def test_aliases_parse_to_the_same_values():
    from tokenskip.stages import evaluate

    parser = evaluate.build_parser()
    dashed = parser.parse_args(["--use-adapter", "--adapter-path", "a", "--max-new-tokens", "64", "--n-samples", "2",
                                "--output_dir", "out", "--data_type", "train", "--top-p=0.9"])
    underscored = parser.parse_args(["--use_adapter", "--adapter_path", "a", "--max_new_tokens", "64",
                                     "--n_samples", "2", "--output-dir", "out", "--data-type", "train", "--top_p=0.9"])
    assert vars(dashed) == vars(underscored)
    assert dashed.use_adapter and dashed.max_new_tokens == 64 and dashed.top_p == 0.9 and dashed.output_dir == "out"
    # what follows `--` stays positional; an unknown flag is still refused in one line
    from tokenskip.core.errors import UsageError

    with pytest.raises(UsageError, match="unrecognized arguments: --use-adaptor"):
        parser.parse_args(["--use-adaptor"])


def test_help_shows_one_spelling_and_no_default_for_switches():
    from tokenskip.stages import soft

    text = [p for name, p in PARSERS.items() if name == "soft_compress.py train"][0].format_help()
    assert "--no-query-in-compressor" in text and "--no_query_in_compressor" not in text
    block = text.split("--no-query-in-compressor", 1)[1].split("\n  --", 1)[0]
    assert "(default: True)" not in block
    assert soft.build_parser() is not None
    help_text = PARSERS["evaluation.py"].format_help()
    assert "--use_adapter" in help_text and "--use-adapter" not in help_text
