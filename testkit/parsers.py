"""The argparse parser behind each entry script, by the name a user types: what the flag tests walk and the
docs tests parse documented commands with."""

from __future__ import annotations

import argparse


def script_parsers(subcommands: bool = False) -> dict[str, argparse.ArgumentParser]:
    """Each entry script's parser; with `subcommands`, soft_compress.py's subcommands too ("soft_compress.py train")."""
    from tokenskip.stages import cts, download, evaluate, lingua, llamafactory, report, soft, train

    parsers = {
        "evaluation.py": evaluate.build_parser(),
        "LLMLingua.py": lingua.build_parser("llmlingua2"),
        "llmlingua_ner.py": lingua.build_parser("ner"),
        "CTS_data_get.py": cts.build_parser(),
        "get_llamafactory_input.py": llamafactory.build_parser(),
        "copy_to_llamafactory.py": llamafactory.copy_parser(),
        "register_dataset.py": llamafactory.register_parser(),
        "download_models.py": download.build_parser(),
        "report.py": report.build_parser(),
        "soft_compress.py": soft.build_parser(),
        "-m tokenskip.stages.train": train.build_parser(),
    }
    if subcommands:
        for action in parsers["soft_compress.py"]._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    parsers[f"soft_compress.py {name}"] = sub
    return parsers
