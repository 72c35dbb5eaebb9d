"""Classification metrics from predicted probabilities and true labels, in NumPy.

Everything `tlkeras evaluate` and `result.metrics` report: accuracy, top-k accuracy, loss,
per-class precision / recall / F1 / support, macro and weighted averages, the confusion matrix,
expected calibration error, and ROC-AUC / PR-AUC (the positive class of a binary task, one class
against the rest averaged over classes otherwise).

>>> import numpy as np
>>> p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
>>> m = classification_metrics(p, np.array([0, 1, 1, 1]), ["cat", "dog"])
>>> m["accuracy"], m["confusion_matrix"], m["per_class"]["dog"]["recall"]
(0.75, [[1, 0], [1, 2]], 0.6667)
>>> m["roc_auc"]  # every dog scores above the cat
1.0
"""

from __future__ import annotations

import numpy as np

ECE_BINS = 15  # equal-width confidence bins, as in Guo et al. 2017 ("On calibration of modern neural networks")
_DIGITS = 4


def _r(x: float) -> float:
    return round(float(x), _DIGITS)


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve: the probability that a random positive scores above a random
    negative (ties count one half). None when one of the two groups is empty.

    >>> roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    0.75
    """
    positive = positive.astype(bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the precision-recall curve as average precision: the mean, over the positives,
    of the precision at each one's score threshold (tied scores form one threshold).

    >>> average_precision(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))  # (1/1 + 2/3) / 2
    0.8333333333333333
    """
    positive = positive.astype(bool)
    n_pos = int(positive.sum())
    if n_pos == 0:
        return None
    order = np.argsort(-scores, kind="mergesort")
    s, hits = scores[order], positive[order]
    # one point per distinct threshold: the last index of each run of equal scores
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(hits)[last]
    precision = tp / (last + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Σ over equal-width confidence bins of (share of samples) × |accuracy − mean confidence|,
    with confidence the top-1 probability.

    >>> expected_calibration_error(np.array([[0.9, 0.1], [0.9, 0.1]]), np.array([0, 1]))  # 0.9 sure, 50 % right
    0.4
    """
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        rows = which == b
        if rows.any():
            ece += rows.mean() * abs(correct[rows].mean() - confidence[rows].mean())
    return _r(ece)


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """[true, predicted] counts."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray, class_names: list[str],
                           top_k: int = 5) -> dict:
    """Every metric of a single-label classifier (see the module docstring); numbers rounded to
    4 digits, the confusion matrix as nested lists (rows: true class, columns: predicted)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n, num_classes = len(labels), len(class_names)
    if n == 0:
        return {"count": 0}
    if probabilities.shape != (n, num_classes):
        raise ValueError(f"probabilities have shape {probabilities.shape}; expected ({n}, {num_classes}) "
                         f"for {n} labels and {num_classes} classes")
    predicted = probabilities.argmax(axis=1)
    matrix = confusion_matrix(labels, predicted, num_classes)
    picked = np.clip(probabilities[np.arange(n), labels], 1e-7, 1.0)

    per_class = {}
    support = matrix.sum(axis=1)
    for c, name in enumerate(class_names):
        tp = matrix[c, c]
        predicted_c = matrix[:, c].sum()
        precision = tp / predicted_c if predicted_c else 0.0
        recall = tp / support[c] if support[c] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": _r(precision), "recall": _r(recall), "f1": _r(f1), "support": int(support[c])}

    present = [name for c, name in enumerate(class_names) if support[c]]
    averages = {}
    for avg in ("macro", "weighted"):
        weights = np.array([per_class[name]["support"] for name in present], dtype=np.float64)
        if avg == "macro":
            weights = np.ones_like(weights)
        averages[avg] = {
            key: _r(np.average([per_class[name][key] for name in present], weights=weights))
            for key in ("precision", "recall", "f1")
        }

    out = {
        "count": int(n),
        "accuracy": _r((predicted == labels).mean()),
        "loss": _r(-np.log(picked).mean()),
    }
    k = min(top_k, num_classes)
    if 1 < k < num_classes:
        top = np.argsort(-probabilities, axis=1, kind="mergesort")[:, :k]
        out[f"top_{k}_accuracy"] = _r((top == labels[:, None]).any(axis=1).mean())
    out.update({
        "per_class": per_class,
        "macro_avg": averages["macro"],
        "weighted_avg": averages["weighted"],
        "confusion_matrix": matrix.tolist(),
        "expected_calibration_error": expected_calibration_error(probabilities, labels),
    })
    if num_classes == 2:
        auc, ap = roc_auc(probabilities[:, 1], labels == 1), average_precision(probabilities[:, 1], labels == 1)
        out["roc_auc"] = None if auc is None else _r(auc)
        out["pr_auc"] = None if ap is None else _r(ap)
    else:  # one class against the rest, averaged over the classes present
        aucs = [roc_auc(probabilities[:, c], labels == c) for c in range(num_classes)]
        aps = [average_precision(probabilities[:, c], labels == c) for c in range(num_classes)]
        aucs, aps = [a for a in aucs if a is not None], [a for a in aps if a is not None]
        out["roc_auc"] = _r(np.mean(aucs)) if aucs else None  # macro one-vs-rest
        out["pr_auc"] = _r(np.mean(aps)) if aps else None
    return out


def format_metrics(metrics: dict, noun: str = "images") -> str:
    """A console report: headline numbers, then precision / recall / F1 / support per class.

    >>> m = classification_metrics(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([0, 1]), ["cat", "dog"])
    >>> print(format_metrics(m).splitlines()[0])
    images 2   accuracy 1.0000   loss 0.1643   ECE 0.1500   ROC-AUC 1.0000   PR-AUC 1.0000
    """
    if not metrics.get("count"):
        return f"no {noun} evaluated\n"
    head = [f"{noun} {metrics['count']}", f"accuracy {metrics['accuracy']:.4f}"]
    head += [f"{k.replace('_', '-')} {v:.4f}" for k, v in metrics.items() if k.startswith("top_")]
    head.append(f"loss {metrics['loss']:.4f}")
    head.append(f"ECE {metrics['expected_calibration_error']:.4f}")
    for key, label in (("roc_auc", "ROC-AUC"), ("pr_auc", "PR-AUC")):
        if metrics.get(key) is not None:
            head.append(f"{label} {metrics[key]:.4f}")
    rows = [(name, v["precision"], v["recall"], v["f1"], v["support"]) for name, v in metrics["per_class"].items()]
    for avg in ("macro_avg", "weighted_avg"):
        v = metrics[avg]
        rows.append((avg.replace("_avg", " avg"), v["precision"], v["recall"], v["f1"], metrics["count"]))
    width = max(12, *(len(r[0]) for r in rows))
    lines = ["   ".join(head), "", f"{'class':<{width}}  precision  recall     f1  support"]
    for name, p, r, f, n in rows:
        lines.append(f"{name:<{width}}  {p:9.4f}  {r:6.4f}  {f:5.4f}  {n:7d}")
    return "\n".join(lines) + "\n"


# === Multi-label ===


def precision_recall_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) at each distinct threshold, highest first (for the report's PR curves).

    >>> r, p = precision_recall_curve(np.array([0.9, 0.6, 0.3]), np.array([1, 0, 1]))
    >>> r.tolist(), p.round(3).tolist()
    ([0.5, 0.5, 1.0], [1.0, 0.5, 0.667])
    """
    positive = np.asarray(positive, dtype=bool)
    order = np.argsort(-scores, kind="mergesort")
    s, hits = np.asarray(scores)[order], positive[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1] if len(s) else np.zeros(0, np.int64)
    tp = np.cumsum(hits)[last] if len(s) else np.zeros(0)
    return tp / max(int(positive.sum()), 1), tp / (last + 1)


def _prf(tp, fp, fn) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def multilabel_metrics(probabilities: np.ndarray, labels: np.ndarray, class_names: list[str],
                       thresholds: list[float]) -> dict:
    """Every metric of a multi-label classifier at the given per-class thresholds: micro, macro and
    weighted precision/recall/F1, mean average precision (over classes with positives), macro
    ROC-AUC, subset accuracy (every label right), Hamming loss (share of wrong labels), the mean
    binary cross-entropy, and per class precision/recall/F1/AP/ROC-AUC/support/threshold.

    >>> p = np.array([[0.9, 0.2], [0.8, 0.7], [0.3, 0.6], [0.1, 0.1]])
    >>> y = np.array([[1, 0], [1, 1], [0, 0], [0, 0]])
    >>> m = multilabel_metrics(p, y, ["sea", "sun"], [0.5, 0.5])
    >>> m["subset_accuracy"], m["hamming_loss"], m["micro_avg"]["f1"], m["per_class"]["sun"]["precision"]
    (0.75, 0.125, 0.8571, 0.5)
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    truth = np.asarray(labels) > 0
    n, k = truth.shape if truth.ndim == 2 else (len(truth), len(class_names))
    if n == 0:
        return {"count": 0}
    if probabilities.shape != (n, k) or k != len(class_names):
        raise ValueError(f"probabilities have shape {probabilities.shape}; expected ({n}, {len(class_names)})")
    t = np.asarray(thresholds, dtype=np.float64)
    predicted = probabilities >= t
    tp = (predicted & truth).sum(axis=0)
    fp = (predicted & ~truth).sum(axis=0)
    fn = (~predicted & truth).sum(axis=0)
    support = truth.sum(axis=0)
    per_class = {}
    for c, name in enumerate(class_names):
        precision, recall, f1 = _prf(tp[c], fp[c], fn[c])
        ap = average_precision(probabilities[:, c], truth[:, c])
        auc = roc_auc(probabilities[:, c], truth[:, c])
        per_class[name] = {"precision": _r(precision), "recall": _r(recall), "f1": _r(f1),
                           "average_precision": None if ap is None else _r(ap),
                           "roc_auc": None if auc is None else _r(auc), "support": int(support[c]),
                           "threshold": _r(t[c])}
    micro = _prf(tp.sum(), fp.sum(), fn.sum())
    present = [name for c, name in enumerate(class_names) if support[c]]
    averages = {}
    for avg in ("macro", "weighted"):
        weights = np.array([per_class[name]["support"] for name in present], dtype=np.float64)
        if avg == "macro" or not weights.sum():
            weights = np.ones_like(weights)
        averages[avg] = {key: _r(np.average([per_class[name][key] for name in present], weights=weights))
                         if present else 0.0 for key in ("precision", "recall", "f1")}
    aps = [per_class[name]["average_precision"] for name in present]
    aucs = [v["roc_auc"] for v in per_class.values() if v["roc_auc"] is not None]
    p = np.clip(probabilities, 1e-7, 1 - 1e-7)
    loss = -(truth * np.log(p) + (~truth) * np.log(1 - p)).mean()
    return {
        "count": int(n),
        "micro_f1": _r(micro[2]),
        "subset_accuracy": _r((predicted == truth).all(axis=1).mean()),
        "hamming_loss": _r((predicted != truth).mean()),
        "loss": _r(loss),
        "mean_average_precision": _r(np.mean(aps)) if aps else None,
        "roc_auc": _r(np.mean(aucs)) if aucs else None,
        "micro_avg": {"precision": _r(micro[0]), "recall": _r(micro[1]), "f1": _r(micro[2])},
        "macro_avg": averages["macro"],
        "weighted_avg": averages["weighted"],
        "label_cardinality": _r(truth.sum(axis=1).mean()),
        "per_class": per_class,
        "thresholds": [_r(v) for v in t],
    }


def format_multilabel_metrics(metrics: dict, noun: str = "images") -> str:
    """The console report of `multilabel_metrics`.

    >>> m = multilabel_metrics(np.array([[0.9, 0.2], [0.8, 0.7]]), np.array([[1, 0], [1, 1]]), ["a", "b"], [0.5, 0.5])
    >>> print(format_multilabel_metrics(m).splitlines()[0])
    images 2   micro-F1 1.0000   mAP 1.0000   subset accuracy 1.0000   Hamming loss 0.0000   loss 0.2271   ROC-AUC 1.0000
    """
    if not metrics.get("count"):
        return f"no {noun} evaluated\n"
    head = [f"{noun} {metrics['count']}", f"micro-F1 {metrics['micro_f1']:.4f}"]
    if metrics.get("mean_average_precision") is not None:
        head.append(f"mAP {metrics['mean_average_precision']:.4f}")
    head += [f"subset accuracy {metrics['subset_accuracy']:.4f}", f"Hamming loss {metrics['hamming_loss']:.4f}",
             f"loss {metrics['loss']:.4f}"]
    if metrics.get("roc_auc") is not None:
        head.append(f"ROC-AUC {metrics['roc_auc']:.4f}")
    rows = [(name, v["threshold"], v["precision"], v["recall"], v["f1"], v["average_precision"], v["support"])
            for name, v in metrics["per_class"].items()]
    width = max(12, *(len(r[0]) for r in rows))
    lines = ["   ".join(head), "", f"{'label':<{width}}  threshold  precision  recall     f1      AP  support"]
    for name, t, p, r, f, ap, n in rows:
        ap_text = f"{ap:6.4f}" if ap is not None else "     -"
        lines.append(f"{name:<{width}}  {t:9.4f}  {p:9.4f}  {r:6.4f}  {f:5.4f}  {ap_text}  {n:7d}")
    for avg in ("micro_avg", "macro_avg", "weighted_avg"):
        v = metrics[avg]
        lines.append(f"{avg.replace('_avg', ' avg'):<{width}}  {'':9}  {v['precision']:9.4f}  {v['recall']:6.4f}  "
                     f"{v['f1']:5.4f}")
    return "\n".join(lines) + "\n"


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None when either side is constant.

    >>> spearman(np.array([1.0, 2.0, 3.0, 4.0]), np.array([10.0, 20.0, 40.0, 30.0]))
    0.8
    """
    ra, rb = _average_ranks(np.asarray(a, np.float64)), _average_ranks(np.asarray(b, np.float64))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = np.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else None


def regression_metrics(values: np.ndarray, targets: np.ndarray, names: list[str]) -> dict:
    """MAE, RMSE, R2 and Spearman's rho of each target (`per_target`, in the targets' units) and their mean over the
    targets (R2 is the headline: 1 is exact, 0 is what answering the targets' mean scores).

    >>> m = regression_metrics(np.array([[1.0], [2.0], [2.5]]), np.array([[1.0], [2.0], [3.0]]), ["age"])
    >>> m["mae"], m["rmse"], m["r2"], m["per_target"]["age"]["spearman"]
    (0.1667, 0.2887, 0.875, 1.0)
    """
    values = np.asarray(values, np.float64).reshape(len(values), -1)
    targets = np.asarray(targets, np.float64).reshape(len(targets), -1)
    per_target = {}
    for column, name in enumerate(names):
        v, t = values[:, column], targets[:, column]
        error = v - t
        spread = ((t - t.mean()) ** 2).sum() if len(t) else 0.0
        rho = spearman(v, t) if len(t) > 1 else None
        per_target[name] = {
            "mae": _r(np.abs(error).mean()) if len(t) else None,
            "rmse": _r(np.sqrt((error**2).mean())) if len(t) else None,
            "r2": _r(1.0 - (error**2).sum() / spread) if spread > 0 else None,
            "spearman": _r(rho) if rho is not None else None,
            "mean": _r(t.mean()) if len(t) else None,
            "std": _r(t.std()) if len(t) else None,
        }

    def mean_of(key):
        found = [m[key] for m in per_target.values() if m[key] is not None]
        return _r(np.mean(found)) if found else None

    return {"count": int(len(targets)), "mae": mean_of("mae"), "rmse": mean_of("rmse"), "r2": mean_of("r2"),
            "spearman": mean_of("spearman"), "per_target": per_target}


def format_regression_metrics(metrics: dict, noun: str = "images") -> str:
    """The console report of `regression_metrics`.

    >>> print(format_regression_metrics(regression_metrics(np.array([[1.0], [2.0]]), np.array([[1.0], [3.0]]),
    ...                                                    ["age"])))
    images 2   R2 0.5000   MAE 0.5000   RMSE 0.7071   Spearman 1.0000
    <BLANKLINE>
    target  MAE     RMSE    R2      Spearman
    age     0.5000  0.7071  0.5000  1.0000
    <BLANKLINE>
    """
    def number(value):
        return "-" if value is None else f"{value:.4f}"

    if not metrics.get("count"):
        return f"no {noun} evaluated\n"
    lines = ["   ".join([f"{noun} {metrics['count']}"] + [f"{label} {number(metrics[key])}" for key, label in (
        ("r2", "R2"), ("mae", "MAE"), ("rmse", "RMSE"), ("spearman", "Spearman"))]), ""]
    rows = [("target", "MAE", "RMSE", "R2", "Spearman")] + [
        (name, number(m["mae"]), number(m["rmse"]), number(m["r2"]), number(m["spearman"]))
        for name, m in metrics["per_target"].items()]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines) + "\n"
