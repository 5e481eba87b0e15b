"""Shared fixtures: the embedded model, tiny random models, paths to the shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the shared data folder beside the checkout, as CI lays it out; TOKENSKIP_DATA_DIR names it for the
# product code (which knows no path of any one machine), so runs without --data-path find it too
SHARED_DATA = Path(os.environ.get("TOKENSKIP_DATA_DIR") or ROOT.parent / "shared" / "data")
if SHARED_DATA.is_dir():
    os.environ.setdefault("TOKENSKIP_DATA_DIR", str(SHARED_DATA))
from testkit.tiny_models import save_tiny_llama  # noqa: E402  (testkit/ is on the path: pyproject pythonpath)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct, materialized once into models/ (as download_models.py does)."""
    from tokenskip.models import embedded

    return embedded.materialize(ROOT / "models")


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory, smollm2_dir) -> Path:
    """A 2-layer random-weight Llama with SmolLM2's tokenizer: real code paths, millisecond steps."""
    from transformers import AutoTokenizer

    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), AutoTokenizer.from_pretrained(smollm2_dir))


@pytest.fixture(scope="session")
def tiny_adapter(tiny_lm_dir, tmp_path_factory) -> Path:
    """A LoRA on the tiny model with random (non-zero) weights: it changes the outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    folder = tmp_path_factory.mktemp("adapter")
    peft.save_pretrained(folder)
    return folder
