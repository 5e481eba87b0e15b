"""Whether a model knows which γ a tag says: teacher-forced likelihood of compressed CoTs under each tag.

Generation shows what a model does; it cannot tell "the adapter never learned which γ the tag says"
from "it learned, but greedy decoding does not show it". This measures the first directly, with
forward passes only: for CoTs compressed at each data ratio γd (1.0: the uncompressed CoT) and each
prompt tag γp (1.0: no tag), the mean log-likelihood per token of the training target (the CoT as
compressed at γd, the final-answer sentence and the end of turn) given the prompt tagged γp. The
prompt is `prompts.build_prompt`, the one evaluation.py sends, and the target is stage 3's output
field, so a cell scores exactly a training record with its tag swapped.

Reading the matrix: if γ is learned, each row γd peaks at its own column γp = γd. If the tagged
columns of every row agree to the third decimal, the model learned that a tag is there, not which γ
it names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from tokenskip.prompting import prompts


@dataclass(frozen=True)
class HeldOutCoT:
    """One question's CoT at every data ratio: `cots[γd]` (1.0 = as written), its final answer."""

    id: str
    question: str
    answer: str
    cots: dict[float, str]


def pair_texts(item: HeldOutCoT, data_ratio: float, prompt_ratio: float, *, model_type: str,
               target_of: Callable[[str, str], str], tokenizer=None, ratio_format: str = "eot") -> tuple[str, str]:
    """(prompt, target) for one cell: the prompt tagged `prompt_ratio`, the target compressed at `data_ratio`."""
    prompt = prompts.build_prompt(item.question, model_type=model_type, ratio=prompt_ratio,
                                  bos=getattr(tokenizer, "bos_token", "") or "",
                                  eos=getattr(tokenizer, "eos_token", "") or "", tokenizer=tokenizer,
                                  ratio_format=ratio_format)
    return prompt, target_of(item.cots[data_ratio], item.answer)


def token_logliks(model, tokenizer, pairs: Sequence[tuple[str, str]], *, batch_size: int = 8,
                  device: str = "cpu", progress: Callable[[int], None] | None = None) -> list[tuple[float, int]]:
    """For each (prompt, target): (sum of log p(target token | everything before it), target tokens).

    Prompt and target are tokenized apart, without special tokens, and joined, as LLaMA-Factory
    encodes a training pair; the target ends with the tokenizer's end-of-sequence token, which the
    model is trained to write. Sequences are right-padded, so positions and logits match unpadded runs.
    """
    import torch

    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    encoded = [(tokenizer(p, add_special_tokens=False)["input_ids"],
                tokenizer(t, add_special_tokens=False)["input_ids"] + eos) for p, t in pairs]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    # longest first: batches of similar lengths waste less on padding
    order = sorted(range(len(encoded)), key=lambda i: -(len(encoded[i][0]) + len(encoded[i][1])))
    results: list[tuple[float, int]] = [(0.0, 0)] * len(encoded)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            width = max(len(encoded[i][0]) + len(encoded[i][1]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, index in enumerate(batch):
                sequence = encoded[index][0] + encoded[index][1]
                ids[row, :len(sequence)] = torch.tensor(sequence)
                mask[row, :len(sequence)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            for row, index in enumerate(batch):
                prompt_ids, target_ids = encoded[index]
                first = len(prompt_ids)
                # token t is predicted at position t - 1
                scores = torch.log_softmax(logits[row, first - 1:first - 1 + len(target_ids)], dim=-1)
                picked = scores.gather(1, torch.tensor(target_ids, device=scores.device)[:, None])
                results[index] = (float(picked.sum()), len(target_ids))
            if progress:
                progress(len(batch))
    return results


def gamma_matrix(model, tokenizer, items: Sequence[HeldOutCoT], ratios: Sequence[float], *, model_type: str,
                 target_of: Callable[[str, str], str], batch_size: int = 8, device: str = "cpu",
                 progress: Callable[[int], None] | None = None, ratio_format: str = "eot") -> dict:
    """The len(ratios) x len(ratios) matrix, rows γd, columns γp (both in `ratios`' order).

    A cell is the mean over questions of each target's mean log-likelihood per token (every question
    weighs the same, however long its CoT).
    """
    cells = [(d, p) for d in ratios for p in ratios]
    pairs, where = [], []
    for d, p in cells:
        for item in items:
            pairs.append(pair_texts(item, d, p, model_type=model_type, target_of=target_of, tokenizer=tokenizer,
                                    ratio_format=ratio_format))
            where.append((d, p))
    scores = token_logliks(model, tokenizer, pairs, batch_size=batch_size, device=device, progress=progress)
    per_cell: dict[tuple[float, float], list[float]] = {cell: [] for cell in cells}
    tokens: dict[tuple[float, float], int] = {cell: 0 for cell in cells}
    for cell, (total, count) in zip(where, scores):
        per_cell[cell].append(total / count)
        tokens[cell] += count
    matrix = [[sum(per_cell[(d, p)]) / len(per_cell[(d, p)]) for p in ratios] for d in ratios]
    return {"ratios": list(ratios), "rows": "data ratio γd (the CoT's compression)",
            "columns": "prompt tag γp (1.0: untagged)", "mean_loglik": matrix,
            "target_tokens": [[tokens[(d, p)] // len(items) for p in ratios] for d in ratios],
            "n_questions": len(items), "ratio_format": ratio_format, **read_matrix(matrix, ratios)}


def read_matrix(matrix: Sequence[Sequence[float]], ratios: Sequence[float]) -> dict:
    """What the matrix says: the column each row peaks at; how many rows peak at their own γ; the
    spread of each row over its tagged columns (≈ 0 when the tag's value is ignored); and whether a tag
    changes anything (tagged vs untagged column)."""
    tagged = [j for j, r in enumerate(ratios) if r < 1.0]
    untagged = [j for j, r in enumerate(ratios) if r >= 1.0]
    peaks = [ratios[max(range(len(row)), key=row.__getitem__)] for row in matrix]
    spread = [max(row[j] for j in tagged) - min(row[j] for j in tagged) if tagged else 0.0 for row in matrix]
    shift = [sum(row[j] for j in tagged) / len(tagged) - row[untagged[0]] if tagged and untagged else 0.0
             for row in matrix]
    # a tag's value is read when, among the tagged columns, each compressed row's best is its own γ
    tagged_peaks = [ratios[max(tagged, key=row.__getitem__)] if tagged else None for row in matrix]
    own_tagged = sum(1 for d, peak in zip(ratios, tagged_peaks) if d < 1.0 and peak == d)
    return {"row_peaks": peaks, "rows_peaking_at_own_gamma": sum(1 for d, p in zip(ratios, peaks) if d == p),
            "tagged_row_peaks": tagged_peaks, "compressed_rows_peaking_at_own_tag": own_tagged,
            "compressed_rows": sum(1 for d in ratios if d < 1.0),
            "tagged_spread": spread, "tag_minus_untagged": shift}
