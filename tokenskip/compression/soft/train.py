"""Training: the teacher's answers as targets (sentence-level distillation), then the loop, with
checkpoints a killed run resumes from."""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from tokenskip.compression.soft.items import Item, request_pieces
from tokenskip.compression.soft.model import SoftModel, generate_answers
from tokenskip.compression.soft.settings import CHECKPOINT, TEACHER_FILE, TRAIN_LOG, SoftSettings, TrainSettings
from tokenskip.core.errors import UsageError
from tokenskip.core.jsonio import AppendLog, read_jsonl, write_json_atomic


def teacher_targets(model: SoftModel, items: Sequence[Item], folder: Path, train: TrainSettings,
                    batch_size: int) -> dict[str, str]:
    """The teacher's answer for every item given its whole text CoT, kept in teacher_answers.jsonl
    so that a rerun (or a second recipe on the same data) reuses them."""
    with AppendLog(folder / TEACHER_FILE) as log:
        done = {record["id"]: record["answer"] for record in log.records
                if record.get("max_answer_tokens") == train.max_answer_tokens}
        pending = [item for item in items if item.id not in done]
        if pending:
            requests = [request_pieces(model.tokenizer, item, model.settings, item.context) for item in pending]
            model.eval()
            for start in range(0, len(pending), 256):  # logged in slices: a killed run keeps what it made
                chunk = pending[start:start + 256]
                answers = generate_answers(model, requests[start:start + 256], condition="text",
                                           max_new_tokens=train.max_answer_tokens, batch_size=batch_size,
                                           desc=f"teacher answers {start + len(chunk)}/{len(pending)}")
                for item, answer in zip(chunk, answers):
                    log.append({"id": item.id, "answer": answer, "max_answer_tokens": train.max_answer_tokens})
                    done[item.id] = answer
    return done


def target_ids(tokenizer, text: str) -> list[int]:
    """A target's token ids, ended by the turn's end so the generator learns to stop."""
    from tokenskip.models.loading import stop_token_ids

    ends = stop_token_ids(tokenizer)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else ends[0]
    return tokenizer(text, add_special_tokens=False).input_ids + [end]





def train_compressor(items: Sequence[Item], *, settings: SoftSettings, train_settings: TrainSettings, out_dir: Path,
          device: str, dtype, max_steps: int | None = None, teacher_batch: int = 16, progress: bool = True) -> dict:
    """Train a soft compressor on `items` into `out_dir` (resumes from its checkpoint); returns the summary."""
    from tqdm.auto import tqdm

    settings.check()
    started = time.perf_counter()
    model = SoftModel.create(settings, device=device, dtype=dtype, seed=train_settings.seed)
    targets = _targets(model, items, out_dir, train_settings, teacher_batch)
    teacher_seconds = time.perf_counter() - started
    examples = [(request_pieces(model.tokenizer, item, settings, item.context),
                 target_ids(model.tokenizer, targets[item.id])) for item in items]
    per_step = train_settings.batch_size * train_settings.grad_accum
    total_steps = max(1, math.ceil(len(examples) * train_settings.epochs / per_step))
    if max_steps:
        total_steps = min(total_steps, max_steps)
    calibration = model.fit_output_map([pieces for pieces, _ in examples[:64]])
    optimizer, scheduler = _optimizer(model, train_settings, total_steps)
    order = _order(len(examples), total_steps * per_step, train_settings.seed)
    recorded = {"settings": asdict(settings), "train": asdict(train_settings), "n_items": len(examples),
                "total_steps": total_steps}
    checkpoint = out_dir / CHECKPOINT
    step = _resume(checkpoint, recorded, model, optimizer, scheduler, device)
    model.train()
    train_seconds = 0.0
    with AppendLog(out_dir / TRAIN_LOG) as log, tqdm(total=total_steps, initial=step, desc="soft compression",
                                                    unit="step", disable=not progress) as bar:
        while step < total_steps:
            tick = time.perf_counter()
            batches = [[examples[i] for i in order[start:start + train_settings.batch_size]]
                       for start in range(step * per_step, (step + 1) * per_step, train_settings.batch_size)]
            loss = _step(model, optimizer, scheduler, batches, train_settings.max_grad_norm)
            step += 1
            train_seconds += time.perf_counter() - tick
            log.append({"step": step, "loss": round(loss, 5), "lr": scheduler.get_last_lr()[0],
                        "seconds": round(time.perf_counter() - tick, 3)})
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
            if step % train_settings.save_every == 0 and step < total_steps:
                _save_checkpoint(checkpoint, model, optimizer, scheduler, step, recorded)
    model.eval()
    model.save(out_dir)
    checkpoint.unlink(missing_ok=True)
    losses = [record["loss"] for record in read_jsonl(out_dir / TRAIN_LOG, what="training log")]
    summary = {"steps": total_steps, "examples": len(examples), "teacher_seconds": round(teacher_seconds, 1),
               "calibration": calibration,
               "train_seconds": round(train_seconds, 1), "first_loss": losses[0] if losses else None,
               "last_loss": (sum(losses[-10:]) / len(losses[-10:])) if losses else None}
    write_json_atomic(out_dir / "train_summary.json", {**summary, **recorded})
    return summary


def _targets(model: SoftModel, items: Sequence[Item], out_dir: Path, train: TrainSettings,
             teacher_batch: int) -> dict[str, str]:
    """What the model learns to write after the compressed CoT: the teacher's answer, or the gold one."""
    if train.target == "teacher":
        return teacher_targets(model, items, out_dir, train, teacher_batch)
    if train.target == "gold":
        # "}" closes the \boxed{ that ends a non-thinking request; a thinking answer is written whole
        return {item.id: (f"{item.answer}}}" if not item.thinking else item.answer) for item in items}
    raise UsageError(f"--target must be teacher or gold, got {train.target!r}")


def _optimizer(model: SoftModel, train: TrainSettings, total_steps: int):
    """AdamW with the generator and the compressor at their own learning rates, linear warm-up and decay."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    groups = model.trainable()
    optimizer = torch.optim.AdamW(
        [{"params": groups["generator"], "lr": train.lr},
         {"params": groups["compressor"], "lr": train.compressor_lr}],
        weight_decay=train.weight_decay)
    warmup = math.ceil(train.warmup_ratio * total_steps)
    return optimizer, get_linear_schedule_with_warmup(optimizer, warmup, total_steps)


def _resume(checkpoint: Path, recorded: dict, model: SoftModel, optimizer, scheduler, device: str) -> int:
    """The step to go on from: 0 without a checkpoint; a checkpoint of other settings is refused."""
    import torch

    if not checkpoint.is_file():
        return 0
    state = torch.load(checkpoint, map_location=device, weights_only=False)
    if state["recorded"] != recorded:
        raise UsageError(f"{checkpoint} is from a run with other settings or data; "
                         "use another --output-dir, or delete the checkpoint to start over")
    model.load_state(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    print(f"resuming from step {state['step']} of {recorded['total_steps']} ({checkpoint})")
    return state["step"]


def _step(model: SoftModel, optimizer, scheduler, batches: list, max_grad_norm: float) -> float:
    """One optimizer step over micro-batches (gradient accumulation); returns the step's mean loss."""
    import torch

    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for batch in batches:
        loss = model.loss(batch) / len(batches)
        loss.backward()
        total += loss.item()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    scheduler.step()
    return total


def _order(n: int, needed: int, seed: int) -> list[int]:
    """Example indices for `needed` draws: shuffled epochs, one after another."""
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < needed:
        epoch = list(range(n))
        rng.shuffle(epoch)
        order += epoch
    return order[:needed]


def _save_checkpoint(path: Path, model: SoftModel, optimizer, scheduler, step: int, recorded: dict) -> None:
    import torch
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"model": model.state(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "step": step, "recorded": recorded}, tmp)
    os.replace(tmp, path)
