"""Stage 4's launch plan: how many processes LLaMA-Factory's torchrun launcher will start, and the
gradient accumulation that keeps the recipe's global batch on that many.

TokenSkip's recipes train with a global batch of 8 (per-device 1 x accumulation 8 on one GPU). On
W processes the same step needs accumulation 8 / (per-device x W): without it, 8 GPUs would train
on batches of 64 and take an eighth of the steps, a different recipe. LLaMA-Factory does not adjust
it, so the launcher does, unless the user sets gradient_accumulation_steps themselves.

A recipe written for several GPUs says so in a comment `# global_batch: N` (LLaMA-Factory reads no
comments); otherwise its global batch is per-device x accumulation, as on one device.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenskip.core.errors import UsageError

DISTRIBUTED_ENV = ("FORCE_TORCHRUN", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "NPROC_PER_NODE")
DEEPSPEED_CONFIGS = {"z2": "configs/deepspeed/ds_z2_config.json", "z3": "configs/deepspeed/ds_z3_config.json"}
_GLOBAL_BATCH = re.compile(r"^#\s*global_batch:\s*(\d+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class TrainPlan:
    world_size: int
    nnodes: int
    nproc_per_node: int
    per_device: int
    accumulation: int
    global_batch: int
    overrides: tuple[str, ...]  # key=value for llamafactory-cli, the user's first, ours after
    output_dir: str | None = None  # where LLaMA-Factory writes the adapter (the recipe's, or the override's)

    def describe(self) -> str:
        where = f"{self.nnodes} node(s) x {self.nproc_per_node} process(es)" if self.world_size > 1 else "1 process"
        return (f"stage 4 on {where}: global batch {self.global_batch} = per-device {self.per_device} x "
                f"accumulation {self.accumulation} x world size {self.world_size}")


def read_recipe(path: Path) -> tuple[dict, int | None]:
    """A LLaMA-Factory YAML recipe, and the global batch its comment declares (None if none)."""
    import yaml

    if not path.is_file():
        raise UsageError(f"recipe not found: {path} (recipes are in configs/examples/)")
    text = path.read_text(encoding="utf-8")
    try:
        recipe = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"{path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    declared = _GLOBAL_BATCH.search(text)
    return recipe, int(declared.group(1)) if declared else None


def parse_overrides(overrides: Sequence[str]) -> dict[str, str]:
    parsed = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"an override is key=value (e.g. dataset=mydata), got {item!r}")
        parsed[key] = value
    return parsed


def world_of(env: Mapping[str, str], gpus: int) -> tuple[int, int]:
    """(nodes, processes per node) LLaMA-Factory's launcher starts: torchrun when FORCE_TORCHRUN is
    set or more than one GPU is visible, NPROC_PER_NODE defaulting to the visible GPUs."""
    def number(name: str, default: int) -> int:
        value = env.get(name, "")
        if not value:
            return default
        if not value.isdigit() or int(value) < 1:
            raise UsageError(f"{name} must be a positive integer, got {value!r}")
        return int(value)

    torchrun = env.get("FORCE_TORCHRUN", "").lower() in ("1", "true", "y", "yes") or gpus > 1
    if not torchrun:
        return 1, 1
    return number("NNODES", 1), number("NPROC_PER_NODE", max(gpus, 1))


def plan_training(recipe_path: Path, overrides: Sequence[str], env: Mapping[str, str], gpus: int,
                  global_batch: int | None = None, deepspeed: str | None = None) -> TrainPlan:
    recipe, declared = read_recipe(recipe_path)
    given = parse_overrides(overrides)
    settings = {**recipe, **given}
    per_device = int(settings.get("per_device_train_batch_size", 8))  # transformers' default
    nnodes, nproc = world_of(env, gpus)
    world = nnodes * nproc
    wanted = global_batch or declared or per_device * int(recipe.get("gradient_accumulation_steps", 1))
    extra = []
    if "gradient_accumulation_steps" in given:
        accumulation = int(given["gradient_accumulation_steps"])  # the user's choice stands
    else:
        if wanted % (per_device * world):
            raise UsageError(f"a global batch of {wanted} does not split over {world} process(es) of per-device batch "
                             f"{per_device}: set GLOBAL_BATCH to a multiple of {per_device * world}, or "
                             "per_device_train_batch_size / gradient_accumulation_steps in TRAIN_OVERRIDES")
        accumulation = wanted // (per_device * world)
        if accumulation != recipe.get("gradient_accumulation_steps"):
            extra.append(f"gradient_accumulation_steps={accumulation}")
    if deepspeed:
        if deepspeed not in DEEPSPEED_CONFIGS:
            raise UsageError(f"DEEPSPEED must be one of {', '.join(DEEPSPEED_CONFIGS)}, got {deepspeed!r}")
        if "deepspeed" not in given:
            extra.append(f"deepspeed={DEEPSPEED_CONFIGS[deepspeed]}")
    return TrainPlan(world, nnodes, nproc, per_device, accumulation, per_device * accumulation * world,
                     (*overrides, *extra), output_dir=settings.get("output_dir"))
