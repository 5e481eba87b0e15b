"""Stage 4: LoRA SFT with LLaMA-Factory (`llamafactory-cli train RECIPE key=value...`), on one GPU,
several, or several nodes, with TokenSkip's global batch kept (tokenskip/training/plan.py).

LLaMA-Factory's own launcher starts torchrun when FORCE_TORCHRUN=1 (or more than one GPU is
visible), reading NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT and NPROC_PER_NODE from the
environment; this stage passes them through, sets the accumulation that keeps the recipe's global
batch on that many processes, and adds a DeepSpeed ZeRO config when asked.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tokenskip.core.cli import StageParser
from tokenskip.core.devices import visible_gpus
from tokenskip.core.errors import UsageError
from tokenskip.training.plan import DEEPSPEED_CONFIGS, DISTRIBUTED_ENV, TrainPlan, plan_training

EXAMPLES = """examples:
  scripts/4_train.sh                                    (one GPU, the default recipe)
  FORCE_TORCHRUN=1 NPROC_PER_NODE=8 DEEPSPEED=z3 scripts/4_train.sh
  FORCE_TORCHRUN=1 NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 NPROC_PER_NODE=8 scripts/4_train.sh
"""


def build_parser() -> StageParser:
    parser = StageParser(prog="python -m tokenskip.stages.train", description=__doc__.split("\n\n")[0],
                         epilog=EXAMPLES)
    add = parser.add_argument
    add("--global-batch", type=int, default=None,
        help="examples per optimizer step over all processes (default: the recipe's `# global_batch:` comment, "
             "else per-device x accumulation as written: 8 for TokenSkip's recipes)")
    add("--deepspeed", choices=sorted(DEEPSPEED_CONFIGS), default=None,
        help="add configs/deepspeed/ds_{z2,z3}_config.json (ZeRO-2 shards optimizer states and gradients, ZeRO-3 "
             "also the weights: for models that do not fit one GPU)")
    add("--llamafactory-cli", default=None, help="the llamafactory-cli to run (default: the one beside this Python)")
    add("--dry-run", action="store_true", help="print the plan and the command, run nothing")
    add("recipe", help="a LLaMA-Factory YAML recipe (configs/examples/...)")
    add("overrides", nargs="*", metavar="key=value", help="recipe values to override, as llamafactory-cli takes them")
    return parser


def find_cli(given: str | None) -> str:
    beside = Path(sys.executable).parent / "llamafactory-cli"
    cli = given or (str(beside) if beside.is_file() else shutil.which("llamafactory-cli"))
    if not cli or not (Path(cli).is_file() or shutil.which(cli)):
        raise UsageError("llamafactory-cli not found: run `make setup` (it installs LLaMA-Factory), or pass "
                         "--llamafactory-cli")
    return cli


def main(argv: Sequence[str] | None = None) -> TrainPlan:
    args = build_parser().parse_args(argv)
    if args.global_batch is not None and args.global_batch < 1:
        raise UsageError(f"--global-batch must be positive, got {args.global_batch}")
    plan = plan_training(Path(args.recipe), args.overrides, os.environ, len(visible_gpus()), args.global_batch,
                         args.deepspeed)
    cli = find_cli(args.llamafactory_cli)
    command = [cli, "train", args.recipe, *plan.overrides]
    distributed = " ".join(f"{name}={os.environ[name]}" for name in DISTRIBUTED_ENV if os.environ.get(name))
    print(plan.describe())
    print("running:", (distributed + " " if distributed else "") + shlex.join(command))
    if args.dry_run:
        return plan
    # LLaMA-Factory's launcher finds torchrun on PATH: the one of this environment first
    # (an empty NNODES= would reach torchrun as `--nnodes ''`: unset means LLaMA-Factory's default)
    env = {key: value for key, value in os.environ.items() if key not in DISTRIBUTED_ENV or value}
    env["PATH"] = os.pathsep.join([str(Path(cli).parent), os.environ.get("PATH", "")])
    code = subprocess.call(command, env=env)
    if code:
        raise SystemExit(code)
    record_adapter(plan.output_dir)
    return plan


def record_adapter(output_dir: str | None) -> None:
    """Record the adapter this run wrote as ADAPTER_PATH in models/paths.env (PATHS_ENV), which the stage-5
    scripts read: the table a user gets is the adapter they just trained, never an older or released one."""
    from tokenskip.models.store import update_paths_env

    if not output_dir or not (Path(output_dir) / "adapter_config.json").is_file():
        return  # full fine-tuning writes a model, not an adapter: stage 5 takes it as MODEL_PATH
    env_file = Path(os.environ.get("PATHS_ENV") or "models/paths.env")
    env_file.parent.mkdir(parents=True, exist_ok=True)
    update_paths_env(env_file, {"ADAPTER_PATH": str(Path(output_dir).resolve())})
    print(f"stage 4 wrote the adapter {output_dir}; recorded as ADAPTER_PATH in {env_file}: stage 5 "
          "(scripts/5_evaluate.sh, eval.sh) evaluates it unless ADAPTER_PATH names another")


if __name__ == "__main__":
    from tokenskip.core.cli import user_errors

    with user_errors():
        main()
