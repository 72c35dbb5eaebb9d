"""Which training rows a ranking looks at when it is asked for a sample (`rank_backbones(sample=N)`).

The frozen pass over the training data is what ranking a candidate costs; on large data a sample of a few
thousand rows says the same about the features for a fraction of it. The rows are drawn once from the labels and
the seed, so every candidate is scored on the same ones; single-label data is sampled class by class in
proportion (every class keeps at least one row), multi-label data uniformly.
"""

from __future__ import annotations

import numpy as np


def sample_rows(labels: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """Sorted row numbers of at most `count` rows of `labels` (class ids, or multi-hot rows).

    >>> labels = np.array([0] * 80 + [1] * 20)
    >>> rows = sample_rows(labels, 10, seed=0)
    >>> len(rows), np.bincount(labels[rows]).tolist()
    (10, [8, 2])
    >>> bool((sample_rows(labels, 10, seed=0) == rows).all()), len(sample_rows(labels, 500))
    (True, 100)
    """
    labels = np.asarray(labels)
    total = len(labels)
    rng = np.random.default_rng(seed)
    if count >= total:
        return np.arange(total)
    if labels.ndim != 1:  # multi-hot rows: no single class to stratify by
        return np.sort(rng.choice(total, size=count, replace=False))
    _, inverse = np.unique(labels, return_inverse=True)
    counts = np.bincount(inverse)
    share = np.maximum(1, np.floor(counts * count / total).astype(int))
    while share.sum() > count:  # every class kept at least once may overshoot: trim the largest
        share[np.argmax(share)] -= 1
    left = count - share.sum()
    if left > 0:  # rounding down left rows over: to the classes with the largest remainders
        remainder = counts * count / total - share
        for index in np.argsort(-remainder)[:left]:
            share[index] += 1
    rows = [rng.choice(np.flatnonzero(inverse == c), size=min(int(n), int(counts[c])), replace=False)
            for c, n in enumerate(share)]
    return np.sort(np.concatenate(rows))
