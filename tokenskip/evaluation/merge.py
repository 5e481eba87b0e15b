"""The merge of a sharded evaluation run (tokenskip/core/shards.py says the rule): the K shards'
answers back in question order, in the run folder's files, exactly as the unsharded run writes them.

No model is loaded: the job is planned again from the data and the tokenizer (cheap), which says
which questions each shard owed, and every shard's records are checked against it.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from tokenskip.core.errors import UsageError
from tokenskip.core.jsonio import read_json, read_jsonl, write_json_atomic, write_jsonl_atomic
from tokenskip.core.layout import GENERATION_LOG, METRICS, PREDICTIONS, RUN_SETTINGS
from tokenskip.core.locking import locked
from tokenskip.core.shards import finished_shards
from tokenskip.data import benchmarks as data
from tokenskip.evaluation.config import EvalConfig
from tokenskip.evaluation.run import (
    SharedModel,
    claim_run_folder,
    finish_run,
    plan_job,
    run_settings,
    same_setting,
    shard_record,
)

ENGINE_KEYS = ("backend", "dtype", "served_model")  # run.json's record of the engine: one for all shards


def merge_shards(config: EvalConfig, examples: list[data.Example], shared: SharedModel, samples_dir: Path) -> dict:
    plan = config.shards
    settings = run_settings(config, shared)
    job = plan_job(config, examples, shared, settings.max_new_tokens)
    rerun = f"evaluation.py (the same flags, --num-shards {plan.count})"
    folders = finished_shards(samples_dir, plan.count, METRICS, rerun)
    with locked(samples_dir, *folders):  # a shard still running, or a second merge, is refused here
        folders = finished_shards(samples_dir, plan.count, METRICS, rerun)
        records: dict[str, dict] = {}
        timings: list[dict] = []
        engines = []
        for shard, folder in zip(plan.shards(), folders):
            recorded = read_json(folder / RUN_SETTINGS, what="shard settings")
            changed = {key: (recorded.get(key), value) for key, value in asdict(settings).items()
                       if not same_setting(key, recorded.get(key), value)}
            if changed:
                diff = ", ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changed.items())
                raise UsageError(f"{shard} ({folder}) ran with other settings than this merge ({diff}); "
                                 "merge with the shards' flags, or rerun that shard")
            if recorded.get("shard") != shard_record(shard, job):
                raise UsageError(f"{shard} ({folder}) split the job otherwise ({recorded.get('shard')}, this merge: "
                                 f"{shard_record(shard, job)}); use the shards' --eval_batch_size, or rerun them")
            owed = {example.id for example in job.share(shard)[0]}
            found = read_jsonl(folder / PREDICTIONS, what="shard predictions")
            if {record["id"] for record in found} != owed or len(found) != len(owed):
                raise UsageError(f"{shard} ({folder}) holds {len(found)} answers, not the {len(owed)} questions "
                                 "of its share; delete that folder and rerun the shard")
            records.update((record["id"], record) for record in found)
            timings += read_jsonl(folder / GENERATION_LOG, what="shard generation log")
            if found:  # a shard with an empty share never started an engine
                engines.append({key: recorded[key] for key in ENGINE_KEYS if recorded.get(key) is not None})
        if any(engine != engines[0] for engine in engines):
            raise UsageError(f"the shards ran on different engines ({engines}); rerun them alike")
        claim_run_folder(samples_dir, settings)  # only now: a refused merge leaves no trace
        run_file = samples_dir / RUN_SETTINGS
        write_json_atomic(run_file, {**read_json(run_file), **engines[0]})
        write_jsonl_atomic(samples_dir / GENERATION_LOG, timings)
        print(f"merged {plan.count} shards of {samples_dir}")
        return finish_run(samples_dir, [records[example.id] for example in job.examples], timings, config,
                          settings, shared, job, {"merged_shards": plan.count})
