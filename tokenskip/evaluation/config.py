"""What one evaluation run is: the frozen config a call's flags make, the settings a resumed run
must match (run.json), and the run's folder."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

from tokenskip.core import layout
from tokenskip.core.errors import UsageError
from tokenskip.core.jsonio import read_json
from tokenskip.core.layout import METRICS
from tokenskip.core.ratios import check_ratio
from tokenskip.core.shards import ShardPlan, shard_plan
from tokenskip.evaluation import baselines

BASELINES = baselines.NAMES
# the adapter of a served model is named, not a folder: a run's adapter_path is then this + its name
SERVED_ADAPTER = "served:"
# what one call may run with --runs, in the order it runs them: the original first (truncation scales
# its CoT length), the base model's runs together, then the adapter's (the hf backend loads each once)
RUN_METHODS = ("original", *BASELINES, "tokenskip")
THINKING_SWITCH = ("auto", "on", "off")
OVERLONG = ("warn", "skip", "truncate")


@dataclass(frozen=True)
class EvalConfig:
    """Everything one evaluation.py call was asked to do, checked once and never changed afterwards.

    `at(ratio)` gives the same call at one ratio, which is what each run folder is made from.
    """

    output_dir: str
    model_path: str
    tokenizer_path: str | None
    adapter_path: str | None  # set only with --use_adapter
    model_size: str
    model_type: str
    ratios: tuple[float, ...]
    benchmark: str
    data_type: str
    data_path: str | None
    backend: str
    max_num_examples: int | None
    max_new_tokens: int
    eval_batch_size: int | None
    temperature: float
    top_p: float
    n_samples: int
    seed: int
    tensor_parallel_size: int | None
    device: str
    dtype: str
    baseline: str | None
    label: str | None
    grader: str
    grading_timeout: float
    regrade: str | None
    overlong: str
    latency_probe: int
    system: str | None = None
    thinking: str = "auto"
    question_field: str | None = None
    answer_field: str | None = None
    enforce_eager: bool = False
    gpu_memory_utilization: float | None = None  # vLLM: None leaves vLLM's default (0.9)
    batching: str = "auto"  # the transformers backend: "static" turns continuous batching off
    cpu_products: str = "auto"  # the transformers backend on a CPU: "linear" turns tokenskip/backends/skinny.py off
    ratio_format: str = "eot"  # how γ is written into the prompt (prompts.RATIO_FORMATS)
    server_url: str | None = None
    served_model: str | None = None
    served_adapter: str | None = None
    server_concurrency: int = 16
    server_prompt: str = "ids"
    runs: tuple[str, ...] | None = None  # --runs: several methods in one call (plan() lists its runs)
    baseline_ratios: tuple[float, ...] = ()
    budgets: tuple[int, ...] = ()  # --budget-tokens: the budgeted baselines' budgets, given in tokens
    budget_tokens: int | None = None  # this run's budget given in tokens (a config made by at_budget())
    shards: ShardPlan = ShardPlan()  # --num-shards / --shard-index / --merge-shards
    data_parallel_size: int = 1  # vllm/hf: ranks (processes) on this node; ray: engine replicas in the cluster
    pipeline_parallel_size: int = 1
    distributed_executor_backend: str = "auto"

    @classmethod
    def from_args(cls, args) -> EvalConfig:
        for ratio in args.compression_ratio + (args.baseline_ratios or []):
            check_ratio(ratio, keep_all=True,
                        what="--compression_ratio" if ratio in args.compression_ratio else "--baseline-ratios")
        backend = "vllm" if args.use_vllm else args.backend
        if (backend == "server") != bool(args.server_url):
            raise UsageError("--backend server needs --server-url (e.g. http://localhost:8000/v1)" if args.server_url
                             is None else "--server-url goes with --backend server")
        if args.server_concurrency < 1:
            raise UsageError(f"--server-concurrency must be 1 or more, got {args.server_concurrency}")
        if backend == "server" and args.served_adapter and not args.adapter_path:
            args.adapter_path = SERVED_ADAPTER + args.served_adapter  # the run's adapter is the server's
        adapter_runs = args.use_adapter or "tokenskip" in (args.runs or ())
        if backend == "server" and args.adapter_path and adapter_runs and not args.served_adapter:
            raise UsageError("with --backend server the adapter is the server's: name it with --served-adapter")
        runs, baseline_ratios = cls.check_runs(args)
        budgets = cls.check_budgets(args)
        if args.max_new_tokens <= 0:
            raise UsageError(f"--max_new_tokens must be positive, got {args.max_new_tokens}")
        if args.eval_batch_size is not None and args.eval_batch_size <= 0:
            raise UsageError(f"--eval_batch_size must be positive, got {args.eval_batch_size}")
        if args.temperature < 0:
            raise UsageError(f"--temperature must be >= 0, got {args.temperature}")
        if args.max_num_examples is not None and args.max_num_examples <= 0:
            raise UsageError(f"--max_num_examples must be positive (leave it out for the whole dataset), "
                             f"got {args.max_num_examples}")
        if args.baseline and args.use_adapter:
            raise UsageError(f"--baseline {args.baseline} runs the base model: drop --use_adapter")
        if args.baseline and baselines.TABLE[args.baseline].takes_ratio and not budgets \
                and max(args.compression_ratio) >= 1.0:
            raise UsageError(f"--baseline {args.baseline} runs the base model at ratios below 1: "
                             "pass --compression_ratio values < 1")
        if args.baseline and not baselines.TABLE[args.baseline].takes_ratio and args.compression_ratio != [1.0]:
            raise UsageError(f"--baseline {args.baseline} takes no γ (it runs once, in its own folder): drop "
                             "--compression_ratio")
        if not 0.0 < args.top_p <= 1.0:
            raise UsageError(f"--top_p must be in (0, 1], got {args.top_p}")
        if args.n_samples < 1:
            raise UsageError(f"--n_samples must be 1 or more, got {args.n_samples}")
        if args.n_samples > 1 and args.temperature == 0:
            raise UsageError(f"--n_samples {args.n_samples} with greedy decoding gives {args.n_samples} copies of "
                             "one answer; add --temperature (e.g. 0.6)")
        if args.ratio_format == "token" and backend not in ("auto", "hf"):
            raise UsageError(RATIO_TOKEN_BACKEND.format(backend=backend))
        if args.gpu_memory_utilization is not None and not 0.0 < args.gpu_memory_utilization <= 1.0:
            raise UsageError(f"--gpu-memory-utilization is the share of the GPU's memory vLLM may take, in (0, 1]; "
                             f"got {args.gpu_memory_utilization}")
        if args.latency_probe < 0:
            raise UsageError(f"--latency-probe must be 0 (off) or a number of questions, got {args.latency_probe}")
        if args.use_adapter and not args.adapter_path:
            raise UsageError("--use_adapter needs --adapter-path pointing at a LoRA adapter folder")
        shards = cls.check_scaling(args)
        values = {field.name: getattr(args, field.name) for field in fields(cls)
                  if field.name not in ("ratios", "adapter_path", "backend", "runs", "baseline_ratios", "shards",
                                        "budgets", "budget_tokens")}
        adapter = args.use_adapter or (runs is not None and "tokenskip" in runs)
        return cls(**values, ratios=tuple(dict.fromkeys(args.compression_ratio)),
                   adapter_path=args.adapter_path if adapter else None,
                   backend=backend, runs=runs, baseline_ratios=baseline_ratios, shards=shards, budgets=budgets)

    @staticmethod
    def check_scaling(args) -> ShardPlan:
        """--num-shards / --shard-index / --merge-shards and --data-parallel-size, checked."""
        shards = shard_plan(args)
        if args.data_parallel_size < 1:
            raise UsageError(f"--data-parallel-size must be 1 or more, got {args.data_parallel_size}")
        if args.pipeline_parallel_size < 1:
            raise UsageError(f"--pipeline_parallel_size must be 1 or more, got {args.pipeline_parallel_size}")
        backend = "vllm" if args.use_vllm else args.backend
        engines = ("vllm", "ray", "auto")
        if (args.pipeline_parallel_size > 1 or args.distributed_executor_backend != "auto") and backend not in engines:
            raise UsageError(f"--pipeline_parallel_size and --distributed-executor-backend set up vLLM engines: they "
                             f"go with --backend vllm or ray, not {backend}")
        if backend == "ray" and args.distributed_executor_backend != "auto":
            raise UsageError("--backend ray: Ray Data picks each replica's executor (ray when TP x PP > 1); drop "
                             "--distributed-executor-backend")
        if args.data_parallel_size > 1 and (shards.count > 1 or shards.merge) and backend != "ray":
            raise UsageError("--data-parallel-size runs its own shards (one per rank) and merges them: drop "
                             "--num-shards / --shard-index / --merge-shards")
        if args.regrade and (shards.count > 1 or args.data_parallel_size > 1):
            raise UsageError("--regrade reads a finished run: drop the shard and data-parallel flags")
        return shards

    @staticmethod
    def check_runs(args) -> tuple[tuple[str, ...] | None, tuple[float, ...]]:
        """--runs and --baseline-ratios, checked: the methods in running order, the baselines' ratios."""
        if args.runs is None:
            if args.baseline_ratios:
                raise UsageError(f"--baseline-ratios goes with --runs and a baseline that takes γ "
                                 f"({', '.join(baselines.WITH_RATIO)}); alone, use --baseline with --compression_ratio")
            return None, ()
        if args.baseline:
            raise UsageError(f"--baseline {args.baseline} and --runs do not mix: add {args.baseline} to --runs")
        runs = tuple(method for method in RUN_METHODS if method in args.runs)
        if "tokenskip" in runs and not args.adapter_path:
            raise UsageError("--runs tokenskip needs --adapter-path pointing at a LoRA adapter folder")
        if args.use_adapter and "tokenskip" not in runs:
            raise UsageError("--use_adapter with --runs: add tokenskip to --runs for the adapter's runs")
        ratios = tuple(dict.fromkeys(args.baseline_ratios or [r for r in args.compression_ratio if r < 1.0]))
        # with --budget-tokens the budgeted baselines run at those budgets; the others that take γ still need one
        with_ratio = [method for method in runs if method in baselines.WITH_RATIO
                      and not (args.budget_tokens and method in baselines.BUDGETED)]
        if with_ratio and (not ratios or max(ratios) >= 1.0):
            raise UsageError(f"--runs {' '.join(with_ratio)}: these baselines run at ratios below 1; give them with "
                             "--baseline-ratios (or --compression_ratio values < 1)")
        return runs, ratios

    @staticmethod
    def check_budgets(args) -> tuple[int, ...]:
        """--budget-tokens, checked: the budgets, each a run folder of every budgeted baseline in the call."""
        if not args.budget_tokens:
            return ()
        budgeted = ", ".join(baselines.BUDGETED)
        if any(tokens < 1 for tokens in args.budget_tokens):
            raise UsageError(f"--budget-tokens takes budgets of 1 token or more, got {args.budget_tokens}")
        if args.runs is not None:
            if not any(method in baselines.BUDGETED for method in args.runs):
                raise UsageError(f"--budget-tokens sets the budget of {budgeted}: add one of them to --runs")
        elif args.baseline not in baselines.BUDGETED:
            raise UsageError(f"--budget-tokens sets the budget of a budgeted baseline: use it with --baseline "
                             f"{' or '.join(baselines.BUDGETED)} (or --runs with one of them)"
                             + (f"; {args.baseline} takes none" if args.baseline else ""))
        elif args.compression_ratio != [1.0]:
            raise UsageError(f"--baseline {args.baseline} --budget-tokens: the budget is given in tokens, not "
                             "derived from γ; drop --compression_ratio (or drop --budget-tokens)")
        return tuple(dict.fromkeys(args.budget_tokens))

    def plan(self) -> list[EvalConfig]:
        """The runs of this call, one config each (one ratio, one folder), in the order they run."""
        if self.runs is None:
            if self.budgets:
                return [self.at_budget(tokens) for tokens in self.budgets]
            return [self.at(ratio) for ratio in self.ratios]
        base = replace(self, runs=None, adapter_path=None, baseline=None, label=None, baseline_ratios=(), budgets=())
        planned = []
        for method in self.runs:
            if method == "original":
                planned.append(base.at(1.0))
            elif method == "tokenskip":
                planned += [replace(base, adapter_path=self.adapter_path, label=self.label).at(ratio)
                            for ratio in self.ratios]
            elif self.budgets and baselines.TABLE[method].budgeted:
                planned += [replace(base, baseline=method).at_budget(tokens) for tokens in self.budgets]
            elif baselines.TABLE[method].takes_ratio:
                planned += [replace(base, baseline=method).at(ratio) for ratio in self.baseline_ratios]
            else:  # Chain-of-Draft, NoThinking: once, without γ
                planned.append(replace(base, baseline=method).at(1.0))
        return planned

    @property
    def method(self) -> str:
        """The run's method at its ratio: see `method_of`."""
        return method_of(self.baseline, self.adapter_path, self.ratio)

    def at(self, ratio: float) -> EvalConfig:
        return replace(self, ratios=(ratio,))

    def at_budget(self, tokens: int) -> EvalConfig:
        """The same call's budgeted baseline at a budget of `tokens`: a run without γ (its ratio is 1.0, as for the
        methods that take none), filed by its budget."""
        return replace(self, ratios=(1.0,), budgets=(), budget_tokens=tokens)

    @property
    def ratio(self) -> float:
        [ratio] = self.ratios  # only for a config made by at()
        return ratio


@dataclass(frozen=True)
class RunSettings:
    """What determines a run's outputs; a resumed run must match it exactly."""

    model_path: str
    tokenizer_path: str
    adapter_path: str | None
    model_type: str
    compression_ratio: float
    baseline: str | None
    benchmark: str
    data_type: str
    data_source: str
    data_sha256: str
    max_num_examples: int | None
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    overlong: str
    n_samples: int
    system: str | None
    thinking: str
    question_field: str  # "" unless --question-field / --answer-field read the file through other fields
    answer_field: str
    adapter_sha256: str | None = None  # the adapter's files (models/loading.adapter_sha256); None: no adapter
    ratio_format: str = "eot"  # prompts.RATIO_FORMATS: the tag's spelling changes every tagged prompt
    budget: int | None = None  # a budgeted baseline's token budget (baselines.py); None: none
    answer_tokens: int | None = None  # budget forcing: the forced answer's most tokens
    budget_tokens: int | None = None  # the budget as given (--budget-tokens); None: derived from γ, or none


RATIO_TOKEN_BACKEND = ("--ratio-format token: the adapter trains the embeddings of the added tokens, which "
                       "--backend {backend} cannot load; use --backend hf")

# Settings added after runs were already made: an older run.json without them is taken to have used
# the value shown (None: not recorded then, so it cannot be checked, and it is filled in now).
LEGACY_SETTINGS = {"data_sha256": None, "overlong": "warn", "n_samples": 1, "system": None, "thinking": "auto",
                   "question_field": "", "answer_field": "", "adapter_sha256": None,
                   "ratio_format": "eot", "budget": None, "answer_tokens": None, "budget_tokens": None}


def run_dir(config: EvalConfig) -> Path:
    """The original layout; train-split adapter runs and γ-tagged base runs get their own folder."""
    return layout.run_dir(layout.model_dir(config.output_dir, config.model_size), method=config.method,
                          ratio=config.ratio, data_type=config.data_type, budget_tokens=config.budget_tokens)


def original_run_metrics(config: EvalConfig) -> dict:
    """The base model's run on the same split, whose mean CoT length a budgeted baseline's budget scales."""
    path = layout.original_samples(layout.model_dir(config.output_dir, config.model_size), config.data_type) / METRICS
    if not path.exists():
        raise UsageError(f"--baseline {config.baseline} needs the base model's run first ({path} is missing): "
                         "run evaluation.py with the same --output-dir and --model-size, without --baseline (or add "
                         "original to --runs)")
    return read_json(path)


def baseline_budget(config: EvalConfig) -> int | None:
    """A budgeted baseline's token budget: the one given in tokens, else at its γ round(γ x the base model's mean CoT
    tokens), at least 1."""
    if not config.baseline or not baselines.TABLE[config.baseline].budgeted:
        return None
    if config.budget_tokens is not None:
        return config.budget_tokens
    return max(1, round(config.ratio * original_run_metrics(config)["avg_cot_length"]))


def effective_max_new_tokens(config: EvalConfig, budget: int | None = None) -> int:
    """The run's generation budget: a baseline's whose budget caps generation (truncation; budget forcing's first
    phase) is that `budget` (`baseline_budget`, computed here when not given)."""
    if config.baseline and baselines.TABLE[config.baseline].caps_generation:
        return budget if budget is not None else baseline_budget(config)
    # The original scaled MATH's budget by γ for adapter runs; kept, but as an integer.
    if config.benchmark == "math" and config.adapter_path:
        return max(1, int(round(config.max_new_tokens * config.ratio)))
    return config.max_new_tokens


def method_of(baseline: str | None, adapter_path: str | None, ratio: float) -> str:
    """A run's method, as metrics.json records it and layout.run_dir files it: a baseline, the
    adapter ("tokenskip"), the base model ("original"), or the base model with a γ tag ("ratio-tag")."""
    if baseline:
        return baseline
    if adapter_path:
        return "tokenskip"
    return "original" if ratio == 1.0 else "ratio-tag"


def run_method(settings: RunSettings) -> str:
    return method_of(settings.baseline, settings.adapter_path, settings.compression_ratio)


def chunk_size(config: EvalConfig, backend_name: str) -> int:
    """Prompts per generate call: --eval_batch_size, else the backend's default; the transformers backend's
    continuous batching takes several prompts per sequence slot (--eval_batch_size slots)."""
    from tokenskip.backends.hf import DEFAULT_BATCH_SIZE, prompts_per_call
    from tokenskip.backends.ray_data import CHUNK_SIZE as RAY_CHUNK_SIZE
    from tokenskip.backends.server import CHUNK_SIZE as SERVER_CHUNK_SIZE
    from tokenskip.backends.vllm import CHUNK_SIZE
    from tokenskip.models.loading import resolve_device

    if backend_name == "hf":
        return prompts_per_call(config.eval_batch_size or DEFAULT_BATCH_SIZE, config.temperature,
                                resolve_device(config.device), config.batching)
    defaults = {"vllm": CHUNK_SIZE, "server": SERVER_CHUNK_SIZE, "ray": RAY_CHUNK_SIZE}
    return config.eval_batch_size or defaults.get(backend_name, DEFAULT_BATCH_SIZE)
