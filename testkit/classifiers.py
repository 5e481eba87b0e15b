"""Tiny random-weight LLMLingua-2-style token classifiers built offline, and CoT texts to feed them.

Shared by the LLMLingua-2 and NER tests and by bench/bench_llmlingua2.py. llmlingua picks its code
path from the folder name, hence FOLDER_NAMES; the toolkit's scorers must not care about it.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (
    BertConfig,
    BertForTokenClassification,
    BertTokenizer,
    XLMRobertaConfig,
    XLMRobertaForTokenClassification,
    XLMRobertaTokenizer,
)

from tokenskip.data.benchmarks import gsm8k_solution_as_output

# the shared data as the product finds it ($TOKENSKIP_DATA_DIR), else beside the checkout as CI lays it out
DATA_DIR = Path(os.environ.get("TOKENSKIP_DATA_DIR") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
GSM8K_TRAIN = DATA_DIR / "gsm8k" / "train.jsonl"
FOLDER_NAMES = {
    "xlm-roberta": "tiny-llmlingua-2-xlm-roberta-large-meetingbank",
    "bert": "tiny-llmlingua-2-bert-base-multilingual-cased-meetingbank",
}
# a wide initialisation makes every output depend visibly on context, so that a wrong framing
# token (say <s> where llmlingua feeds [CLS]) changes many compressions instead of none
TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "initializer_range": 0.2,
}

HANDWRITTEN = [
    (
        "Step 1: Natalia sold 48/2 = 24 clips in May.\nStep 2: Natalia sold 48+24 = 72 clips altogether.\n"
        "The final answer is: $\\boxed{72}$"
    ),
    (
        "We have $\\frac{1}{2} \\cdot 36 = 18$ apples, and $\\sqrt{16} = 4$ pears.\n\n"
        "So the total is $18 + 4 = 22$.\nThe final answer is: $\\boxed{22}$"
    ),
    "Step 1: : : Step Step: 1:2:3 Steps and Stepping: done.\nStep 2:: x = 3.5, y = -2; z = x*y = -7.0",
    "Tabs\tand  double  spaces\n\n\nand blank lines   end.",
    "Call f() then g() and h(): max() + min() = sum() of {}; (x)(y) is xy.",
    "Café costs 5€ — naïve 中文 (ünïcödé) words: résumé.",
    "A literal <pad> token, a <s> tag and [brackets] {braces} (parens) #hash ##double 100%!",
    "18",
    "",
    "  \n ",
]


def gsm8k_cots(n: int) -> list[str]:
    if not GSM8K_TRAIN.is_file():
        return []
    with GSM8K_TRAIN.open(encoding="utf-8") as handle:
        return [gsm8k_solution_as_output(json.loads(line)["answer"]) for line, _ in zip(handle, range(n))]


def synthetic_cots(n: int, seed: int = 0) -> list[str]:
    """GSM8K-like reasoning with numbers, LaTeX and step markers, for runs without the dataset."""
    rng = random.Random(seed)
    nouns = ["apples", "pages", "dollars", "minutes", "cookies", "marbles", "miles", "tickets"]
    names = ["Natalia", "Weng", "Betty", "Julie", "James", "Albert", "Mark", "Tina"]
    verbs = ["sold", "bought", "read", "earned", "baked", "collected", "walked", "gave away"]
    texts = []
    for _ in range(n):
        lines = []
        for step in range(1, rng.randint(2, 7)):
            a, b = rng.randint(2, 500), rng.randint(2, 60)
            form = rng.choice(
                [
                    f"{rng.choice(names)} {rng.choice(verbs)} {a} * {b} = {a * b} {rng.choice(nouns)}.",
                    f"So $\\frac{{{a}}}{{{b}}} = {a / b:.2f}$ {rng.choice(nouns)} per day.",
                    f"That means {a} - {b} = {a - b} {rng.choice(nouns)} are left, so half is {(a - b) / 2}.",
                    f"In total, {rng.choice(names)} has ${a} + ${b} = ${a + b}.",
                ]
            )
            lines.append(f"Step {step}: {form}" if rng.random() < 0.5 else form)
        lines.append(f"The final answer is: $\\boxed{{{rng.randint(1, 999)}}}$")
        texts.append("\n".join(lines))
    return texts


def sample_corpus() -> list[str]:
    """Short and long CoTs; the long ones need several 512-token windows, one has no sentence end."""
    short = gsm8k_cots(20) + synthetic_cots(20) + HANDWRITTEN
    long = [" ".join(short[:25]), "\n\n".join(synthetic_cots(30, seed=1)), " and ".join(["x + 1"] * 400)]
    return short + long


def train_tokenizer(family: str, texts: list[str], vocab_size: int):
    """A small tokenizer of `family` trained on `texts`, with the pipeline transformers uses for it."""
    if family == "xlm-roberta":
        spm = Tokenizer(models.Unigram())
        spm.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.WhitespaceSplit(),
                pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"),
            ]
        )
        spm.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=[]))
        pieces = [tuple(piece) for piece in json.loads(spm.to_str())["model"]["vocab"]]
        specials = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]  # XLM-R's first ids
        return XLMRobertaTokenizer(vocab=specials + pieces + [("<mask>", 0.0)])
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=False)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    wordpiece.train_from_iterator(
        texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials)
    )
    return BertTokenizer(vocab=wordpiece.get_vocab(), do_lower_case=False)


def build_classifier(
    folder: Path, family: str, texts: list[str], *, vocab_size: int, seed: int = 0, **sizes
) -> Path:
    """Save a random-weight token classifier and its tokenizer to `folder`.

    The classifier's weights are widened so keep probabilities spread over (0, 1) instead of
    hugging 0.5; otherwise nearly every ratio would cut through a crowd of near-ties.
    """
    tokenizer = train_tokenizer(family, texts, vocab_size)
    common = dict(vocab_size=len(tokenizer), num_labels=2, max_position_embeddings=514, **sizes)
    torch.manual_seed(seed)
    if family == "xlm-roberta":
        config = XLMRobertaConfig(pad_token_id=1, bos_token_id=0, eos_token_id=2, **common)
        model = XLMRobertaForTokenClassification(config)
    else:
        model = BertForTokenClassification(BertConfig(pad_token_id=0, **common))
    torch.nn.init.normal_(model.classifier.weight, std=1.5 / sizes["hidden_size"] ** 0.5)
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


def tokenizer_training_texts() -> list[str]:
    # the non-ASCII letters of HANDWRITTEN stay out, so they reach the classifier as unknown tokens;
    # the repeated "f()" text makes "()" a piece, which llmlingua's substring test counts as punctuation
    return gsm8k_cots(2000) + synthetic_cots(300, seed=2) + HANDWRITTEN[:4] + HANDWRITTEN[4:5] * 50


def tiny_classifier(parent: Path, kind: str) -> Path:
    """A tiny random classifier of `kind` (a FOLDER_NAMES key) in `parent`, in a folder named as the
    real model's is (the scorer picks its tokenizer options from that name)."""
    return build_classifier(parent / FOLDER_NAMES[kind], kind, tokenizer_training_texts(), vocab_size=1000, **TINY)


def sample_cots(n: int, seed: int = 0) -> list[str]:
    """n GSM8K reference solutions from the shared data, or n synthetic ones where it is absent."""
    return gsm8k_cots(n) or synthetic_cots(n, seed=seed)
