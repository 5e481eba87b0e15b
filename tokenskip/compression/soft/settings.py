"""What a soft compressor is made of and how it is trained and measured: frozen settings, the
folder's file names, the conditions compared."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

from tokenskip.core.errors import UsageError
from tokenskip.core.jsonio import read_json
from tokenskip.prompting import prompts

SETTINGS_FILE = "soft_compression.json"
COMPRESSOR_DIR = "compressor"
GENERATOR_ADAPTER_DIR = "generator_adapter"
MEMORY_FILE = "memory.safetensors"
TEACHER_FILE = "teacher_answers.jsonl"
TRAIN_LOG = "train_log.jsonl"
CHECKPOINT = "checkpoint.pt"
FORMAT_VERSION = 1

# What the generator is cued with after the CoT: TokenSkip's final-answer sentence, opened up to the
# box, so that every condition (question alone included) answers with the number it boxes.
BOXED_CUE = prompts.BOXED_CUE
# A thinking model's CoT is its <think> block; after it, the model writes its answer section freely.
THINK_CLOSE_CUE = "\n</think>\n\n"

CONDITIONS = ("question", "text", "hard", "soft", "hybrid")
CONDITION_NAMES = {
    "question": "question alone",
    "text": "question + text CoT",
    "hard": "question + hard-compressed CoT",
    "soft": "question + soft-compressed CoT",
    "hybrid": "question + soft-compressed hard-compressed CoT",
}
METRICS_KIND = "soft_compression"  # metrics.json's "stage": how report.py tells these metrics apart





@dataclass(frozen=True)
class SoftSettings:
    """What defines a soft compressor; recorded in the model folder as soft_compression.json."""

    base_model: str
    n_layers: int = 5  # N: the generator's first N layers compress
    mem_tokens: int = 8  # l: memory embeddings for a full block
    block_size: int = 128  # CoT tokens per block
    compressor_train: str = "full"  # "full" (OSCAR) or "lora" (big models on one GPU)
    query_in_compressor: bool = True  # OSCAR compresses each block given the question
    max_question_tokens: int = 256
    max_context_tokens: int = 2048
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    prompt_format: str = "chat"  # the stage-1 prompt the generator reads (tokenskip/prompting/prompts.py)
    # where the generator takes the compressed states in: "input" (OSCAR: as input embeddings) or
    # "layer" (also at layer N, the compressor's own output layer, where they are the generator's
    # hidden states for those positions; see the module's docstring)
    inject: str = "input"

    def memory_count(self, n_block_tokens: int) -> int:
        """Memory embeddings for a block of `n_block_tokens`: `mem_tokens` per full block, at the same rate for less."""
        return max(1, math.ceil(n_block_tokens * self.mem_tokens / self.block_size))

    def check(self) -> None:
        if not 1 <= self.mem_tokens <= self.block_size:
            raise UsageError(f"--mem-tokens must be between 1 and --block-size ({self.block_size}), "
                             f"got {self.mem_tokens}")
        if self.n_layers < 1:
            raise UsageError(f"--n-layers must be at least 1, got {self.n_layers}")
        if self.inject not in ("input", "layer"):
            raise UsageError(f"--inject must be input or layer, got {self.inject!r}")
        if self.compressor_train not in ("full", "lora"):
            raise UsageError(f"--compressor-train must be full or lora, got {self.compressor_train!r}")


@dataclass(frozen=True)
class TrainSettings:
    """How the compressor and the generator's adapter are trained (OSCAR's values as defaults)."""

    target: str = "teacher"  # "teacher": sentence-level distillation; "gold": the dataset's answer
    lr: float = 1e-4  # the generator's LoRA
    compressor_lr: float = 5e-5  # the N-layer compressor
    warmup_ratio: float = 0.05
    weight_decay: float = 0.1
    epochs: float = 1.0
    batch_size: int = 8
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    max_answer_tokens: int = 16  # the teacher's answers
    save_every: int = 50  # optimizer steps between checkpoints (a killed run resumes from the last)
    seed: int = 42





@dataclass(frozen=True)
class EvalSettings:
    conditions: tuple[str, ...] = ("question", "text", "soft")
    max_answer_tokens: int = 16
    batch_size: int = 16
    latency_probe: int = 16  # requests timed one at a time per condition
    grading_timeout: float = 5.0
    hard_ratio: float | None = None



def read_settings(folder: Path) -> SoftSettings:
    path = folder / SETTINGS_FILE
    if not path.is_file():
        raise UsageError(f"{folder} is not a trained soft compressor (no {SETTINGS_FILE}); "
                         "train one with `python soft_compress.py train`")
    recorded = read_json(path, what="soft compressor settings")
    if recorded.get("format_version") != FORMAT_VERSION:
        raise UsageError(f"{path}: format version {recorded.get('format_version')} is not {FORMAT_VERSION}; retrain it")
    known = {f.name for f in fields(SoftSettings)}
    return SoftSettings(**{k: v for k, v in recorded.items() if k in known})
