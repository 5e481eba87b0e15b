"""Running an evaluation: one model shared by every run of a call, prompts fitted to the context,
generation in resumable chunks, grading, and the records and metrics each run writes."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from tqdm import tqdm

from tokenskip.backends import Backend, create_backend
from tokenskip.core import layout
from tokenskip.core.errors import UsageError
from tokenskip.core.jsonio import AppendLog, read_json, write_json_atomic, write_jsonl_atomic
from tokenskip.core.layout import GENERATION_LOG, METRICS, PREDICTIONS, RUN_SETTINGS
from tokenskip.core.locking import FolderLock
from tokenskip.core.shards import Shard
from tokenskip.data import benchmarks as data
from tokenskip.data.records import Stage1Prediction
from tokenskip.evaluation import baselines
from tokenskip.evaluation.config import (
    LEGACY_SETTINGS,
    EvalConfig,
    RunSettings,
    baseline_budget,
    chunk_size,
    effective_max_new_tokens,
    run_dir,
    run_method,
)
from tokenskip.evaluation.metrics import summarize
from tokenskip.evaluation.pool import Pool, fill_group, poolable_call
from tokenskip.evaluation.summary import print_summary
from tokenskip.grading.graders import Grade, Grader, GradeRequest
from tokenskip.prompting import prompts, templates, thinking


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
    adapter_sha256: str | None = None  # the call's adapter (--adapter-path), hashed once
    family: str = templates.GENERIC.name  # the chat-template family (tokenskip/prompting/templates.py)
    call: EvalConfig | None = None  # the whole call (its backend, budget and adapter size the engine)
    backend: Backend | None = None
    loaded_adapter: str | None = None  # the adapter the loaded backend holds
    pool: Pool | None = None  # completions generated ahead for runs that share one queue (pool.py)

    def backend_for(self, run: EvalConfig) -> Backend:
        """The loaded backend, as `run` needs it (with its adapter or without)."""
        call = self.call or run
        if call.backend in ("vllm", "server", "ray"):  # the adapter is applied (or not) per request
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

    def count_tokens(self, text: str) -> int:
        """Tokens of a prompt, as every backend counts them (no special tokens added)."""
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None


def evaluate_runs(planned: list[EvalConfig], examples: list[data.Example], shared: SharedModel) -> list[dict]:
    """Every run of a call, in order, each as `evaluate_ratio` makes it; consecutive runs too small to fill the
    slots on their own have their requests generated in one queue first (pool.py), with the same outputs."""
    shared.pool = Pool() if planned and poolable_call(shared.call or planned[0]) else None
    results = []
    for index, run in enumerate(planned):
        if shared.pool is not None and index not in shared.pool.runs:
            fill_group(shared.pool, planned, index, examples, shared)
        results.append(evaluate_ratio(run, examples, shared))
    return results


def evaluate_ratio(config: EvalConfig, examples: list[data.Example], shared: SharedModel) -> dict:
    """One run: one ratio, one folder, resumable; the folder is locked while the run writes it.
    A shard (--shard-index) is the same run on its share of the batches, in a folder of its own."""
    samples_dir = layout.samples_dir(run_dir(config))
    if config.shards.merge:
        from tokenskip.evaluation.merge import merge_shards

        return merge_shards(config, examples, shared, samples_dir)
    shard = config.shards.shard
    folder = shard.folder(samples_dir) if shard else samples_dir
    with FolderLock(folder):
        return _evaluate_locked(config, examples, shared, folder, shard)


@dataclass(frozen=True)
class Job:
    """What a run works on, planned from the whole dataset, so that every shard plans alike."""

    examples: list[data.Example]  # in question order, samples expanded, overlong ones applied
    prompt_of: dict[str, str]
    skipped: list[str]  # ids left out by --overlong skip
    batches: list[list[data.Example]]
    chunk_size: int
    # how shards split the job: by the plan's batches where a batch's make-up decides its outputs
    # (transformers pads a batch together), else by question (vLLM and servers schedule each request
    # on its own, and a chunk is only how much reaches the disk at once: 512 prompts would be one shard)
    shard_by_batch: bool = True

    def share(self, shard: Shard | None) -> tuple[list[data.Example], list[list[data.Example]]]:
        """A shard's examples (in question order) and batches. By batch: every K-th batch of the plan,
        each the very batch the unsharded run generates (same padding, same outputs). By question:
        every K-th question of the longest-first order, so the shares weigh alike, chunked again."""
        if shard is None:
            return self.examples, self.batches
        if self.shard_by_batch:
            batches = shard.take(self.batches)
        else:
            ordered = shard.take([example for batch in self.batches for example in batch])
            batches = [ordered[i:i + self.chunk_size] for i in range(0, len(ordered), self.chunk_size)]
        mine = {example.id for batch in batches for example in batch}
        return [example for example in self.examples if example.id in mine], batches


def plan_job(config: EvalConfig, examples: list[data.Example], shared: SharedModel, max_new_tokens: int,
             budget: int | None = None) -> Job:
    prompt_of = build_prompts(config, examples, shared.tokenizer, budget)
    examples, skipped = fit_context(examples, prompt_of, shared.tokenizer, shared.context_length,
                                    max_new_tokens, config.overlong)
    examples = expand_samples(examples, config.n_samples, prompt_of)
    size = chunk_size(config, config.backend)
    return Job(examples, prompt_of, skipped, plan_batches(examples, prompt_of, shared.count_tokens, size), size,
               shard_by_batch=config.backend == "hf")


def _evaluate_locked(config: EvalConfig, examples: list[data.Example], shared: SharedModel, samples_dir: Path,
                     shard: Shard | None) -> dict:
    settings = run_settings(config, shared)
    claim_run_folder(samples_dir, settings)
    job = plan_job(config, examples, shared, settings.max_new_tokens, settings.budget)
    if shard:
        claim_shard(samples_dir, shard, job)
    examples, batches = job.share(shard)
    prompt_of = job.prompt_of
    if not examples:  # more shards than the job has batches (or questions): nothing to do but say so
        write_jsonl_atomic(samples_dir / PREDICTIONS, [])
        write_jsonl_atomic(samples_dir / GENERATION_LOG, [])
        metrics = {"shard": [shard.index, shard.count], "n_samples": 0}
        write_json_atomic(samples_dir / METRICS, metrics)
        print(f"{shard}: no questions in its share of {len(job.examples)}; done")
        return metrics
    print(f"Evaluating {shared.model_path} on {config.benchmark}/{config.data_type} ({len(examples)} questions"
          + (f", {shard} of {len(job.examples)}" if shard else "") + ")"
          + (f" with adapter {config.adapter_path}, γ={config.ratio}" if config.adapter_path else "")
          + (f", {config.baseline} baseline" + _baseline_target(config) if config.baseline else ""))

    with AppendLog(samples_dir / PREDICTIONS) as log, AppendLog(samples_dir / GENERATION_LOG) as timing:
        done = {record["id"] for record in log.records}
        unknown = done - {example.id for example in examples}
        if unknown:
            raise UsageError(f"{samples_dir / PREDICTIONS} holds ids not in this dataset (e.g. {sorted(unknown)[0]}); "
                             "use another --output-dir or delete that folder")
        if len(done) < len(examples):
            backend = shared.backend_for(config)
            if shared.pool is not None:
                backend = shared.pool.view(backend)
            if backend.chunk_size != job.chunk_size:
                raise RuntimeError(f"the {backend.name} backend chunks by {backend.chunk_size}, "
                                   f"the plan by {job.chunk_size}")
            run_file = samples_dir / RUN_SETTINGS
            recorded = read_json(run_file)
            write_json_atomic(run_file, {**recorded, **engine_record(backend, recorded, run_file)})
            with Grader(primary=config.grader, timeout=config.grading_timeout) as grader:
                generate_pending(batches, len(examples), prompt_of, backend, grader, log, timing, config,
                                 settings.max_new_tokens)
        # the latency probe times the job's first questions once: in the unsharded run, or in shard 0
        to_probe = [example.id for example in job.examples[:config.latency_probe]] if not shard or not shard.index \
            else []
        probed = {i for entry in timing.records if entry.get("probe") for i in entry["ids"]}
        if not set(to_probe) <= probed:
            probe_latency(to_probe, prompt_of, shared.backend_for(config), settings.max_new_tokens, timing,
                          config.baseline)
        records, timings = log.records, timing.records

    by_id = {record["id"]: record for record in records}
    extra = {"shard": [shard.index, shard.count]} if shard else {}
    return finish_run(samples_dir, [by_id[example.id] for example in examples], timings, config, settings,
                      shared, job, extra)


def finish_run(samples_dir: Path, ordered: list[dict], timings: list[dict], config: EvalConfig,
               settings: RunSettings, shared: SharedModel, job: Job, extra: dict) -> dict:
    """A run's last writes, from its records in question order: predictions.jsonl (rewritten in that
    order) and metrics.json, which says the run is finished; then its summary is printed."""
    write_jsonl_atomic(samples_dir / PREDICTIONS, ordered)
    metrics = run_metrics(ordered, timings, config, settings, shared, read_json(samples_dir / RUN_SETTINGS))
    metrics["n_skipped_overlong"] = len(job.skipped)
    if config.n_samples > 1:
        metrics.update(sampling_summary(ordered, config.n_samples))
    metrics.update(extra)
    write_json_atomic(samples_dir / METRICS, metrics)
    print_summary(metrics, samples_dir / PREDICTIONS, samples_dir / METRICS)
    return metrics


def claim_shard(folder: Path, shard: Shard, job: Job) -> None:
    """Record in the shard's run.json how the job was split (a rerun and the merge must split alike)."""
    path = folder / RUN_SETTINGS
    recorded = read_json(path)
    wanted = shard_record(shard, job)
    if recorded.get("shard") not in (None, wanted):
        raise UsageError(f"{folder} holds {recorded['shard']}, not {wanted}: shards must use the same "
                         "--num-shards and --eval_batch_size; use another --output-dir or delete that folder")
    if recorded.get("shard") is None:
        write_json_atomic(path, {**recorded, "shard": wanted})


def _baseline_target(config: EvalConfig) -> str:
    """" at γ=0.5", " at a budget of 64 tokens", or "" for a baseline without either."""
    if config.budget_tokens is not None:
        return f" at a budget of {config.budget_tokens} tokens"
    return f" at γ={config.ratio}" if baselines.TABLE[config.baseline].takes_ratio else ""


def shard_record(shard: Shard, job: Job) -> dict:
    return {"index": shard.index, "num_shards": shard.count, "chunk_size": job.chunk_size,
            "by": "batch" if job.shard_by_batch else "question", "n_questions": len(job.examples)}


def run_settings(config: EvalConfig, shared: SharedModel) -> RunSettings:
    """What this run's outputs depend on (run.json): a resumed run must match it."""
    budget = baseline_budget(config)  # read once: the original run's metrics
    return RunSettings(
        model_path=shared.model_path, tokenizer_path=shared.tokenizer_path, adapter_path=config.adapter_path,
        model_type=config.model_type, compression_ratio=config.ratio, baseline=config.baseline,
        benchmark=config.benchmark, data_type=config.data_type,
        data_source=data.data_source(config.benchmark, config.data_type, config.data_path),
        data_sha256=shared.data_sha256, max_num_examples=config.max_num_examples,
        max_new_tokens=effective_max_new_tokens(config, budget), temperature=config.temperature, top_p=config.top_p,
        seed=config.seed, overlong=config.overlong, n_samples=config.n_samples, system=config.system,
        thinking=config.thinking, question_field=config.question_field or "",
        answer_field=config.answer_field or "",
        adapter_sha256=shared.adapter_sha256 if config.adapter_path else None,
        ratio_format=config.ratio_format,
        budget=budget,
        answer_tokens=baselines.FORCED_ANSWER_TOKENS if config.baseline == "budget" else None,
        budget_tokens=config.budget_tokens,
    )


def build_prompts(config: EvalConfig, examples: list[data.Example], tokenizer,
                  budget: int | None = None) -> dict[str, str]:
    """Each question's prompt, by id: γ in it for the adapter, none for the baselines (the base model
    knows no ratio tag), a baseline's request after the question or its prefill (baselines.py)."""
    tagged_ratio = 1.0 if config.baseline else config.ratio
    request = baselines.prompt_request(config.baseline, config.ratio, budget)
    switch = {"auto": None, "on": True, "off": False}[config.thinking]
    return {
        example.id: baselines.prefilled(config.baseline, prompts.build_prompt(
            example.question, model_type=config.model_type, ratio=tagged_ratio,
            bos=tokenizer.bos_token or "", eos=tokenizer.eos_token or "", request=request,
            tokenizer=tokenizer, system=config.system, thinking=switch, ratio_format=config.ratio_format,
        ))
        for example in examples
    }


def run_metrics(ordered: list[dict], timings: list[dict], config: EvalConfig, settings: RunSettings,
                shared: SharedModel, recorded: dict) -> dict:
    """metrics.json of a finished run: the summary of its records and timings, and what ran it."""
    generation = [t for t in timings if not t.get("probe")]
    metrics = summarize(ordered, primary=config.grader,
                        total_seconds=sum(t["seconds"] for t in generation),
                        total_tokens=sum(t["tokens"] for t in generation), timings=timings)
    metrics.update(run_description(settings, config, recorded["backend"], shared.family))
    for key in ("dtype", "served_model"):  # the weights' dtype really run (--dtype auto resolved); the server's
        if recorded.get(key):
            metrics[key] = recorded[key]
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
                   if key not in unrecorded and not same_setting(key, found.get(key), value)}
        if "adapter_sha256" in changed and changed["adapter_sha256"][0] is not None:
            raise UsageError(f"the adapter {settings.adapter_path} changed since {samples_dir} was made with it "
                             "(its weights differ: retrained?); use another --output-dir or delete that folder")
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


def same_setting(key: str, old, new) -> bool:
    if key == "data_source" and isinstance(old, str) and not old.startswith("hub:"):
        return Path(old).resolve() == Path(new).resolve()  # one file, named relatively or absolutely
    return old == new


def plan_batches(examples: list[data.Example], prompt_of: dict[str, str], count_tokens,
                 size: int) -> list[list[data.Example]]:
    """Longest prompts first, in fixed batches over the whole dataset.

    Sorting wastes little padding; planning over the whole dataset (not just the pending part)
    keeps every batch the same on a resumed run and in every shard, so their outputs match an
    uninterrupted, unsharded one.
    """
    lengths = {example.id: count_tokens(prompt_of[example.id]) for example in examples}
    ordered = sorted(examples, key=lambda example: -lengths[example.id])
    return [ordered[i:i + size] for i in range(0, len(ordered), size)]


def probe_latency(ids: list[str], prompt_of: dict[str, str], backend: Backend, max_new_tokens: int,
                  timing: AppendLog, baseline: str | None = None) -> None:
    """Time each question alone (batch size 1, after one short untimed warm-up), as one user's
    request would run. The timings go to the timing log (`"probe": true` entries), never into
    predictions.jsonl, which stays byte-identical between runs; the answers already graded stay."""
    backend.generate([prompt_of[ids[0]]], min(8, max_new_tokens), ids=[ids[0]])  # warm-up: allocations, kernels
    for example_id in tqdm(ids, desc="latency probe", unit="q", dynamic_ncols=True):
        start = time.perf_counter()
        [completion] = baselines.generate(backend, [prompt_of[example_id]], max_new_tokens, [example_id], baseline)
        timing.append({"probe": True, "ids": [example_id], "latency_s": [time.perf_counter() - start],
                       "tokens": completion.n_tokens})


def generate_pending(planned: list[list[data.Example]], total: int, prompt_of, backend: Backend, grader: Grader,
                     log: AppendLog, timing: AppendLog, config: EvalConfig, max_new_tokens: int) -> None:
    """Generate and grade the planned batches that hold a question without an answer yet."""
    done = {record["id"] for record in log.records}
    batches = [batch for batch in planned if any(example.id not in done for example in batch)]
    progress = tqdm(total=total, initial=len(done), desc="questions", unit="q", dynamic_ncols=True)
    seconds = tokens = 0.0
    # a pooled run's answers come back at once: its clock adds the share of the pooled call they cost (pool.py)
    clock = getattr(backend, "charged_clock", time.perf_counter)
    for batch in batches:
        start = clock()
        completions = baselines.generate(backend, [prompt_of[example.id] for example in batch], max_new_tokens,
                                         [example.id for example in batch], config.baseline)
        elapsed = clock() - start
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
                       "basis": backend.latency_basis, **({"pooled": True} if clock is not time.perf_counter else {})})
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
    if completion.forced is not None:  # budget forcing cut this output: the text it appended, not generated
        record["forced"] = completion.forced
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


def batching_of(config: EvalConfig, backend_name: str) -> str:
    """How the run's prompts were batched: the engine's own scheduler (vLLM, servers), else the transformers
    backend's continuous or static batches."""
    if backend_name != "hf":
        return "engine"
    from tokenskip.backends.hf import continuous
    from tokenskip.models.loading import resolve_device

    return "continuous" if continuous(config.temperature, resolve_device(config.device), config.batching) else "static"


def run_description(settings: RunSettings, config: EvalConfig, backend_name: str, family: str) -> dict:
    return {
        "method": run_method(settings),
        "label": config.label,
        "compression_ratio": settings.compression_ratio,
        "budget": settings.budget,  # a budgeted baseline's token budget (None: none)
        "budget_tokens": settings.budget_tokens,  # set when the budget was given in tokens rather than by γ
        "use_adapter": settings.adapter_path is not None,
        "model_path": settings.model_path,
        "adapter_path": settings.adapter_path,
        "adapter_sha256": settings.adapter_sha256,
        "model_type": settings.model_type,
        "chat_family": family,
        "system": settings.system,
        "model_size": config.model_size,
        "benchmark": settings.benchmark,
        "data_type": settings.data_type,
        "backend": backend_name,
        "decoding": {"max_new_tokens": settings.max_new_tokens, "temperature": settings.temperature,
                     "top_p": settings.top_p, "seed": settings.seed,
                     "eval_batch_size": chunk_size(config, backend_name), "n_samples": settings.n_samples,
                     "batching": batching_of(config, backend_name)},
        "latency_probe": config.latency_probe,
    }
