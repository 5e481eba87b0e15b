"""Stage 2 in shards (the rule: tokenskip/core/shards.py): shard i of K compresses CoTs i, i + K,
i + 2K... of the prepared list, from the whole stage-1 file, into `{out}/shards/{i}-of-K/`; the
merge puts every line back at its CoT's place and writes the very files one process writes.

A shard reads stage 1's files and writes only its own folder, so shards run side by side. It
compresses its share in one pass (as the unsharded stage does): a killed shard reruns alone, and
more shards make a kill cost less.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tokenskip.compression.driver import Stage2Job, compress_cots, summarize, write_outputs
from tokenskip.core import layout
from tokenskip.core.errors import UsageError
from tokenskip.core.jsonio import read_json, read_jsonl, write_json_atomic, write_jsonl_atomic
from tokenskip.core.locking import locked
from tokenskip.core.shards import Shard, ShardPlan, finished_shards

SHARD_FILE = "shard.json"  # a finished shard's record, written last
COUNTS_FILE = "cot_counts.jsonl"  # each CoT's counts behind the summary's scorer figures


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shard_record(job: Stage2Job, shard: Shard, ids: list[str], n_cots: int) -> dict:
    """What a shard was made from; the merge checks every shard's against its own."""
    return {"index": shard.index, "num_shards": shard.count, "method": job.scorer_type.name,
            "scorer_model": job.scorer_model, "model_type": job.model_type, "max_cot_tokens": job.max_cot_tokens,
            "tokenizer_path": job.tokenizer_path, "ratios": list(job.ratios), "call": job.call,
            "predictions_sha256": file_sha256(job.predictions), "n_cots": n_cots, "ids": ids}


def run_shard(job: Stage2Job, out_folder: Path, shard: Shard, make_scorer) -> dict:
    folder = shard.folder(out_folder)
    with locked(folder):
        prepared = job.prepare()
        mine = shard.take(prepared.records)
        record = shard_record(job, shard, [r["id"] for r in mine], len(prepared.records))
        finish = folder / SHARD_FILE
        if finish.is_file() and read_json(finish) == record:
            print(f"{shard} is already done ({folder})")
            return record
        finish.unlink(missing_ok=True)  # a rerun under other settings: unfinished until it is written again
        if mine:
            scorer = make_scorer()
            print(f"Compressing {len(mine)} of {len(prepared.records)} CoTs ({shard}) with {scorer.name} "
                  f"({job.scorer_model}) on {scorer.device}")
            lines_by_ratio, counts = compress_cots(mine, scorer, job.ratios, job.count_tokens)
        else:
            lines_by_ratio, counts = {ratio: [] for ratio in job.ratios}, []
        for ratio, lines in lines_by_ratio.items():
            write_jsonl_atomic(layout.ratio_file(folder, ratio, job.scorer_type.file_stem), lines)
        write_jsonl_atomic(folder / COUNTS_FILE, [{str(r): c for r, c in one.items()} for one in counts])
        write_json_atomic(finish, record)
    print(f"{shard}: wrote {folder}; merge with --num-shards {shard.count} --merge-shards once all are done")
    return record


def merge_shards(job: Stage2Job, out_folder: Path, plan: ShardPlan) -> dict:
    script = job.scorer_type.script
    rerun = f"{script} (the same flags, --num-shards {plan.count})"
    folders = finished_shards(out_folder, plan.count, SHARD_FILE, rerun)
    samples = job.predictions.parent
    with locked(samples, out_folder, *folders):  # a shard still running, or a second merge, is refused here
        folders = finished_shards(out_folder, plan.count, SHARD_FILE, rerun)
        prepared = job.prepare()
        n = len(prepared.records)
        lines_by_ratio: dict[float, list] = {ratio: [None] * n for ratio in job.ratios}
        counts: list = [None] * n
        for shard, folder in zip(plan.shards(), folders):
            positions = range(shard.index, n, shard.count)
            wanted = shard_record(job, shard, [prepared.records[p]["id"] for p in positions], n)
            found = read_json(folder / SHARD_FILE, what="shard record")
            changed = sorted(key for key in wanted if found.get(key) != wanted[key])
            if changed:
                raise UsageError(f"{shard} ({folder}) was made otherwise than this merge asks ({', '.join(changed)} "
                                 f"differ): merge with the shards' flags and stage-1 file, or rerun that shard")
            for ratio in job.ratios:
                lines = read_jsonl(layout.ratio_file(folder, ratio, job.scorer_type.file_stem), what="shard ratio file")
                if [line.get("id") for line in lines] != wanted["ids"]:
                    raise UsageError(f"{shard}'s ratio file for γ={ratio} does not hold its CoTs; rerun that shard")
                for position, line in zip(positions, lines):
                    lines_by_ratio[ratio][position] = line
            shard_counts = read_jsonl(folder / COUNTS_FILE, what="shard counts")
            if len(shard_counts) != len(positions):
                raise UsageError(f"{shard}'s {COUNTS_FILE} does not hold its CoTs; rerun that shard")
            for position, one in zip(positions, shard_counts):
                counts[position] = {float(r): c for r, c in one.items()}
        summary = summarize(prepared, job.scorer_type, lines_by_ratio, counts)
        write_outputs(samples, out_folder, prepared, lines_by_ratio, summary)
    print(f"merged {plan.count} shards into {out_folder}")
    return summary
