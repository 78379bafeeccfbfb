"""Validation metrics of the reference trainers, and their chance levels.

- ``bleu4``: NLTK's ``corpus_bleu`` (maintained; word-level n-grams over our tokens, several
  references per video, corpus brevity penalty from the closest reference length: the
  definition coco-caption's BLEU uses; sacrebleu applies its own tokeniser to detokenised text
  and wants the same number of references for every video).
- ``r{n}_iou{m}``, ``miou``: 2D-TAN's ``core/eval.py`` (microsoft/VideoX): candidates ranked by
  score, non-maximum suppression (threshold 0.5), hit when one of the first n has IoU > m with
  the moment; ``miou`` the IoU of the first candidate. No maintained package computes them.
- ``hit1``, ``hit2``: MultimodalVideoTag's ``accuracy_metrics.py``: a video is a hit when one of
  its labels is among the k highest scores. ``map``: scikit-learn's ``average_precision_score``
  averaged over the classes that have a positive video.
- ``chance``: the same metrics for predictions drawn at random (seeded, averaged over draws).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np

RECALLS = (1, 5)
IOUS = (0.3, 0.5, 0.7)
NMS_THRESHOLD = 0.5
CHANCE_DRAWS = 20


def bleu4(hypotheses: Sequence[list[str]], references: Sequence[list[list[str]]]) -> float:
    """Corpus BLEU-4 of tokenised hypotheses, each against its list of tokenised references."""
    from nltk.translate.bleu_score import corpus_bleu

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NLTK warns, then scores 0, when no 4-gram matches
        return float(corpus_bleu([list(r) for r in references], list(hypotheses),
                                 weights=(0.25, 0.25, 0.25, 0.25)))


def span_iou(segments: np.ndarray, moment: Sequence[float]) -> np.ndarray:
    inter = np.maximum(0.0, np.minimum(segments[:, 1], moment[1])
                       - np.maximum(segments[:, 0], moment[0]))
    union = np.maximum(segments[:, 1], moment[1]) - np.minimum(segments[:, 0], moment[0])
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(segments: np.ndarray, threshold: float = NMS_THRESHOLD, top_k: int = -1) -> np.ndarray:
    """2D-TAN's ``nms``: keep, in order, segments overlapping every kept one by <= threshold."""
    order = np.arange(len(segments))
    lengths = segments[:, 1] - segments[:, 0]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        if len(keep) == top_k:
            break
        inter = np.maximum(0.0, np.minimum(segments[i, 1], segments[order[1:], 1])
                           - np.maximum(segments[i, 0], segments[order[1:], 0]))
        overlap = inter / (lengths[i] + lengths[order[1:]] - inter)
        order = order[np.flatnonzero(overlap <= threshold) + 1]
    return segments[keep]


def ranked_segments(score_map: np.ndarray, duration: float) -> np.ndarray:
    """The valid (j >= i) cells of an [n, n] score map as [i, j+1] * d / n seconds, best first
    (2D-TAN's ``get_proposal_results``)."""
    size = score_map.shape[-1]
    starts, ends = np.triu_indices(size)
    order = np.argsort(-score_map[starts, ends], kind="stable")
    return np.stack([starts[order], ends[order] + 1], axis=1) / size * duration


def grounding_metrics(ranked: Sequence[np.ndarray], moments: Sequence[Sequence[float]],
                      recalls: Sequence[int] = RECALLS, ious: Sequence[float] = IOUS,
                      nms_threshold: float = NMS_THRESHOLD) -> dict[str, float]:
    """``r{n}_iou{m}`` and ``miou`` of ranked [K, 2] segments against [start, end] moments."""
    hits = {(n, m): [] for n in recalls for m in ious}
    first = []
    for segments, moment in zip(ranked, moments, strict=True):
        overlaps = span_iou(nms(np.asarray(segments, dtype=np.float64), nms_threshold,
                                max(recalls)), moment)
        first.append(overlaps[0])
        for n, m in hits:
            hits[n, m].append(bool((overlaps[:n] > m).any()))
    result = {f"r{n}_iou{m}": float(np.mean(v)) for (n, m), v in hits.items()}
    result["miou"] = float(np.mean(first))
    return result


def hit_at_k(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of videos with a positive label among their k highest scores."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.take_along_axis(labels, top, axis=1).max(axis=1) > 0))


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    positive = labels.sum(axis=0) > 0
    return float(average_precision_score(labels[:, positive], scores[:, positive],
                                         average="macro"))


def tagging_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"hit1": hit_at_k(scores, labels, 1), "hit2": hit_at_k(scores, labels, 2),
            "map": mean_average_precision(scores, labels)}


def chance(metric: Callable[[np.random.Generator], dict[str, float]], seed: int = 0,
           draws: int = CHANCE_DRAWS) -> dict[str, float]:
    """The mean of ``metric(rng)`` over ``draws`` seeded random predictions."""
    rng = np.random.default_rng(seed)
    results = [metric(rng) for _ in range(draws)]
    return {key: float(np.mean([r[key] for r in results])) for key in results[0]}
