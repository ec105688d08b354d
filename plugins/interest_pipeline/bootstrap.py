"""Paired bootstrap of a difference of means, for comparing methods on the same samples.

The samples are (user, cut-off) pairs: every method is scored on the same users at the same
cut-offs, so a resample draws pairs with replacement and takes the same pairs for both methods.
The interval is the percentile interval of ``mean(a) - mean(b)`` over the resamples. A fixed
seed (numpy's ``Generator``) makes a report reproducible.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)

RESAMPLES = 2000
# Indices drawn per chunk of resamples: bounds memory for many pairs (int64, ~32 MB).
_CHUNK_INDICES = 1 << 22


def paired_bootstrap(
    a: Any,
    b: Any,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float | int | None]:
    """Paired bootstrap of ``mean(a) - mean(b)``.

    Args:
        a: per-pair values of the first method (1-d, array-like).
        b: the second method's values on the same pairs, in the same order.
        resamples: bootstrap resamples.
        seed: seed of the random generator.
        level: coverage of the percentile interval.

    Returns:
        {"mean_diff": mean(a) - mean(b), "lo", "hi": the interval's ends, "ratio":
        mean(a) / mean(b) (None when mean(b) is 0), "n": pairs}; all None but n when there
        is no pair.
    """
    import numpy as np

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"paired samples need two 1-d arrays of one length: {a.shape}, {b.shape}")
    if not 0 < level < 1 or resamples < 1:
        raise ValueError(f"need 0 < level < 1 and resamples >= 1: {level}, {resamples}")
    n = len(a)
    if n == 0:
        return {"mean_diff": None, "lo": None, "hi": None, "ratio": None, "n": 0}
    rng = np.random.default_rng(seed)
    diff = a - b
    means = np.empty(resamples)
    chunk = max(1, _CHUNK_INDICES // n)
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        means[start : start + rows] = diff[rng.integers(0, n, size=(rows, n))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    mean_b = float(b.mean())
    return {
        "mean_diff": float(a.mean()) - mean_b,
        "lo": float(lo),
        "hi": float(hi),
        "ratio": float(a.mean()) / mean_b if mean_b != 0 else None,
        "n": n,
    }


def compare_methods(
    samples: Sequence[Mapping[str, Mapping[tuple[str, int], Sequence[float]]]],
    reference: str,
    others: Sequence[str],
    metrics: Sequence[tuple[str, int]],
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict[str, dict[str, float | int | None]]]:
    """``reference`` against each of ``others`` on every metric, pooling the pairs of several
    cut-offs.

    Args:
        samples: one entry per cut-off, {method: {(metric, k): per-user values}}, every
            method's values on the same users in the same order (as
            ``evaluation.CutoffEvaluation.per_user[population]``).
        reference: the method compared, e.g. ``"model"``.
        others: the methods it is compared with.
        metrics: (metric, k) pairs, e.g. ``[("ndcg", 10)]``.
        resamples, seed, level: as in :func:`paired_bootstrap`.

    Returns:
        {other: {"metric@k": paired_bootstrap(reference, other)}}.
    """
    import numpy as np

    def pooled(method: str, key: tuple[str, int]) -> np.ndarray:
        parts = [np.asarray(s[method][key], dtype=np.float64) for s in samples]
        return np.concatenate(parts) if parts else np.empty(0)

    out: dict[str, dict[str, dict[str, float | int | None]]] = {}
    for other in others:
        out[other] = {
            f"{metric}@{k}": paired_bootstrap(
                pooled(reference, (metric, k)), pooled(other, (metric, k)), resamples, seed, level
            )
            for metric, k in metrics
        }
    return out
