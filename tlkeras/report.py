"""Pictures and a report of a run: training curves, confusion matrix, the most confidently wrong
images, and one self-contained report.html tying them to the config and the metrics.

Matplotlib draws on its Agg canvas through `Figure` objects (no pyplot state, no display needed).

>>> import os, tempfile
>>> history = {"epoch": [1, 2, 3], "stage": [1, 1, 2], "loss": [1.0, 0.6, 0.4], "val_loss": [0.9, 0.7, 0.5],
...            "accuracy": [0.5, 0.7, 0.8], "val_accuracy": [0.5, 0.6, 0.8]}
>>> path = plot_training_curves(history, os.path.join(tempfile.mkdtemp(), "curves.png"))
>>> open(path, "rb").read(8) == b"\\x89PNG\\r\\n\\x1a\\n"
True
"""

from __future__ import annotations

import base64
import html
import json
import os
from typing import Optional

import numpy as np

from tlkeras.atomic import atomic_path, write_text_atomic

CURVES_FILE = "training_curves.png"
CONFUSION_FILE = "confusion_matrix.png"
MISTAKES_FILE = "confident_mistakes.png"
PR_CURVES_FILE = "precision_recall_curves.png"
VALUES_FILE = "predicted_vs_true.png"
REPORT_FILE = "report.html"
MISTAKES_SHOWN = 16


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str) -> str:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return path


MIN_SPAN = 0.05  # a curve's y axis spans at least this much: a flat curve reads flat, not as noise magnified


def _not_zoomed_in(ax, floor: Optional[float] = None) -> None:
    """Widen the y axis to at least MIN_SPAN around its data (matplotlib zooms a flat curve until rounding looks like
    movement); never below `floor` (a loss is not negative).

    >>> fig = _figure(2, 2); ax = fig.add_subplot(1, 1, 1); _ = ax.plot([1, 2, 3], [0.5, 0.5002, 0.5001])
    >>> _not_zoomed_in(ax); lo, hi = ax.get_ylim(); bool(round(hi - lo, 3) >= MIN_SPAN)
    True
    """
    lo, hi = ax.get_ylim()
    if hi - lo >= MIN_SPAN:
        return
    middle = (lo + hi) / 2
    lo, hi = middle - MIN_SPAN / 2, middle + MIN_SPAN / 2
    if floor is not None and lo < floor:
        lo, hi = floor, floor + MIN_SPAN
    ax.set_ylim(lo, hi)


def plot_training_curves(history: dict, path: str, accuracy_key: str = "accuracy",
                         evaluated_epoch: Optional[int] = None) -> str:
    """Loss and accuracy (training and validation; `accuracy_key` is the Task's, e.g.
    "binary_accuracy" for multi-label) of both stages on one epoch axis, with the start of stage 2
    marked, and the epoch whose weights were evaluated and exported when it is not the last (`restore_best`)."""
    from matplotlib.ticker import MaxNLocator

    epochs = history.get("epoch", [])
    stages = history.get("stage", [])
    fig = _figure(11, 4)
    for index, metric in enumerate(("loss", accuracy_key)):
        ax = fig.add_subplot(1, 2, index + 1)
        for key, style in ((metric, "-o"), ("val_" + metric, "--s")):
            values = history.get(key)
            if values and len(values) == len(epochs):
                ax.plot(epochs, values, style, markersize=3, label=key.replace("_", " "))
        if 2 in stages and 1 in stages:
            boundary = epochs[stages.index(2)] - 0.5
            ax.axvline(boundary, color="grey", linestyle=":")
            ax.text(boundary, 1.0, " stage 2 ", transform=ax.get_xaxis_transform(), ha="left", va="top", fontsize=8)
            ax.text(boundary, 1.0, " stage 1 ", transform=ax.get_xaxis_transform(), ha="right", va="top", fontsize=8)
        if evaluated_epoch is not None and epochs and evaluated_epoch != epochs[-1]:
            ax.axvline(evaluated_epoch, color="tab:red", alpha=0.6, label=f"exported: epoch {evaluated_epoch}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _not_zoomed_in(ax, 0.0 if metric == "loss" else None)
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return _save(fig, path)


def plot_confusion_matrix(matrix, class_names: list[str], path: str) -> str:
    """The confusion matrix normalised by true class (rows sum to 1), counts in the cells."""
    counts = np.asarray(matrix, dtype=np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, np.maximum(totals, 1))
    n = len(class_names)
    side = min(20.0, max(4.0, 0.5 * n + 2))
    fig = _figure(side + 1, side)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(n), labels=class_names, rotation=90 if n > 6 else 0)
    ax.set_yticks(range(n), labels=class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if share[i, j] > 0.5 else "black")
    ax.set_title("confusion matrix (validation)")
    return _save(fig, path)


def confident_mistakes(probabilities: np.ndarray, labels: np.ndarray, count: int = MISTAKES_SHOWN) -> np.ndarray:
    """Rows of the wrongly predicted images, most confident first.

    >>> confident_mistakes(np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]]), np.array([1, 1, 1])).tolist()
    [0, 2]
    """
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    order = np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")
    return wrong[order][:count]


def plot_mistakes(images: list, rows, probabilities, labels, class_names: list[str], path: str) -> str:
    """A grid of images (uint8 or float [0, 255], HWC) with true and predicted classes."""
    rows = list(rows)
    cols = 4
    grid_rows = max(1, -(-len(rows) // cols))
    fig = _figure(2.4 * cols, 2.6 * grid_rows)
    if not rows:
        ax = fig.add_subplot(1, 1, 1)
        ax.axis("off")
        ax.text(0.5, 0.5, "no misclassified validation images", ha="center", va="center")
        return _save(fig, path)
    for k, (row, image) in enumerate(zip(rows, images)):
        ax = fig.add_subplot(grid_rows, cols, k + 1)
        pixels = np.clip(np.asarray(image, dtype=np.float32), 0, 255).astype(np.uint8)
        ax.imshow(pixels.squeeze(), cmap="gray" if pixels.shape[-1] == 1 else None)
        predicted = int(probabilities[row].argmax())
        ax.set_title(f"true {class_names[labels[row]]}\npred {class_names[predicted]} "
                     f"({probabilities[row, predicted]:.0%})", fontsize=8)
        ax.axis("off")
    fig.suptitle("most confidently wrong validation images")
    return _save(fig, path)


def plot_pr_curves(probabilities: np.ndarray, labels: np.ndarray, class_names: list[str], thresholds, path: str,
                   shown: int = 12) -> str:
    """Precision-recall curve of each class (up to `shown`, most frequent first) with its threshold
    marked: a multi-label model's per-class picture."""
    from tlkeras.metrics import average_precision, precision_recall_curve

    truth = np.asarray(labels) > 0
    order = np.argsort(-truth.sum(axis=0), kind="stable")[:shown]
    cols = min(4, len(order)) or 1
    rows = int(np.ceil(len(order) / cols)) or 1
    fig = _figure(3.2 * cols, 3.0 * rows)
    for index, c in enumerate(order):
        ax = fig.add_subplot(rows, cols, index + 1)
        recall, precision = precision_recall_curve(probabilities[:, c], truth[:, c])
        ax.step(recall, precision, where="post")
        picked = probabilities[:, c] >= thresholds[c]
        tp = int((picked & truth[:, c]).sum())
        if truth[:, c].any():
            ax.plot([tp / truth[:, c].sum()], [tp / max(int(picked.sum()), 1)], "o", color="C3",
                    label=f"threshold {thresholds[c]:.3g}")
            ax.legend(fontsize=7, loc="lower left")
        ap = average_precision(probabilities[:, c], truth[:, c])
        ax.set_title(f"{class_names[c]} (AP {ap:.2f})" if ap is not None else f"{class_names[c]} (no positives)",
                     fontsize=9)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall", fontsize=8)
        ax.set_ylabel("precision", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout(h_pad=1.2, w_pad=1.0)  # each panel's title, ticks and axis labels clear of its neighbours'
    return _save(fig, path)


def plot_regression(values: np.ndarray, targets: np.ndarray, names: list[str], path: str, shown: int = 6) -> str:
    """Each target (up to `shown`): the predicted value against the true one (the diagonal is exact), and the
    residuals against the predicted value (a pattern is a bias the model left)."""
    values = np.asarray(values, np.float64).reshape(len(values), -1)
    targets = np.asarray(targets, np.float64).reshape(len(targets), -1)
    columns = list(range(min(shown, len(names))))
    fig = _figure(7.0, 3.2 * len(columns))
    for row, c in enumerate(columns):
        v, t = values[:, c], targets[:, c]
        ax = fig.add_subplot(len(columns), 2, 2 * row + 1)
        ax.scatter(t, v, s=10, alpha=0.7)
        if len(t):
            low, high = float(min(t.min(), v.min())), float(max(t.max(), v.max()))
            ax.plot([low, high], [low, high], color="grey", linestyle=":", label="exact")
            ax.legend(fontsize=7, loc="upper left")
        ax.set_xlabel(f"true {names[c]}", fontsize=8)
        ax.set_ylabel(f"predicted {names[c]}", fontsize=8)
        ax.grid(alpha=0.3)
        ax = fig.add_subplot(len(columns), 2, 2 * row + 2)
        ax.scatter(v, v - t, s=10, alpha=0.7)
        ax.axhline(0.0, color="grey", linestyle=":")
        ax.set_xlabel(f"predicted {names[c]}", fontsize=8)
        ax.set_ylabel("residual (predicted - true)", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("validation: predicted against true values, and residuals")
    fig.tight_layout()
    return _save(fig, path)


def _embedded(path: str) -> str:
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
    return f'<img alt="{html.escape(os.path.basename(path))}" src="data:image/png;base64,{data}">'


def write_html(run_dir: str, *, metrics: dict, config: dict, record: Optional[dict], pictures: list[str]) -> str:
    """report.html in `run_dir`: headline metrics, per-class table, the pictures embedded, the run
    record and the config - one file to mail or archive."""
    esc = html.escape
    headline = [(k, metrics[k]) for k in metrics if k in ("count", "accuracy", "loss", "expected_calibration_error",
                                                          "roc_auc", "pr_auc", "micro_f1", "mean_average_precision",
                                                          "subset_accuracy", "hamming_loss", "r2", "mae", "rmse",
                                                          "spearman", "epoch", "restored_best", "tta")
                or k.startswith("top_")]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>tlkeras run report</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "th{background:#f3f3f3}td.l,th{text-align:left}td.l{word-break:break-all}img{max-width:100%}</style>",
        "</head><body>",
        f"<h1>tlkeras run: {esc(os.path.basename(os.path.abspath(run_dir)))}</h1>",
        "<h2>Validation metrics</h2><table>",
        *[f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in headline],
        "</table>",
    ]
    if metrics.get("per_class"):
        extra = [k for k in ("threshold", "average_precision", "roc_auc") if k in next(iter(metrics["per_class"].values()))]
        parts.append("<h2>Per class</h2><table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th>"
                     + "".join(f"<th>{esc(k.replace('_', ' '))}</th>" for k in extra) + "<th>support</th></tr>")
        for name, v in metrics["per_class"].items():
            cells = "".join(f"<td>{'-' if v[k] is None else format(v[k], '.4f')}</td>" for k in extra)
            parts.append(f"<tr><th>{esc(name)}</th><td>{v['precision']:.4f}</td><td>{v['recall']:.4f}</td>"
                         f"<td>{v['f1']:.4f}</td>{cells}<td>{v['support']}</td></tr>")
        blanks = "<td></td>" * len(extra)
        for avg in [a for a in ("micro_avg", "macro_avg", "weighted_avg") if a in metrics]:
            v = metrics[avg]
            parts.append(f"<tr><th>{avg.replace('_avg', ' avg')}</th><td>{v['precision']:.4f}</td>"
                         f"<td>{v['recall']:.4f}</td><td>{v['f1']:.4f}</td>{blanks}<td>{metrics['count']}</td></tr>")
        parts.append("</table>")
    if metrics.get("per_target"):  # a regression's targets, in their own units
        columns = ("mae", "rmse", "r2", "spearman", "mean", "std")
        parts.append("<h2>Per target</h2><table><tr><th>target</th>"
                     + "".join(f"<th>{esc(c.upper() if c in ('mae', 'rmse') else c)}</th>" for c in columns) + "</tr>")
        for name, v in metrics["per_target"].items():
            parts.append(f"<tr><th>{esc(name)}</th>" + "".join(
                f"<td>{'-' if v.get(c) is None else f'{v[c]:.4f}'}</td>" for c in columns) + "</tr>")
        parts.append("</table>")
    for picture in pictures:
        if os.path.isfile(picture):
            parts.append(f"<h2>{esc(os.path.splitext(os.path.basename(picture))[0].replace('_', ' '))}</h2>")
            parts.append(_embedded(picture))
    if record:
        parts += _record_tables(record)
    parts += ["<h2>Config</h2>", _key_table(_flatten(config))]
    parts.append("</body></html>")
    path = os.path.join(run_dir, REPORT_FILE)
    write_text_atomic(path, "\n".join(parts))
    return path


def _flatten(value, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, value) of a nested dict, in its order; lists stay one value.

    >>> _flatten({"stage1": {"epochs": 5, "unfreeze": None}, "seed": 0})
    [('stage1.epochs', 5), ('stage1.unfreeze', None), ('seed', 0)]
    """
    if not isinstance(value, dict):
        return [(prefix, value)]
    if not value and prefix:
        return [(prefix, {})]
    rows = []
    for key, item in value.items():
        rows += _flatten(item, f"{prefix}.{key}" if prefix else str(key))
    return rows


def _cell(value) -> str:
    """A table cell; a string that would show blank or hide its spaces is quoted.

    >>> _cell(" "), _cell("per_class"), _cell(None)
    ('&quot; &quot;', 'per_class', '-')
    """
    if value is None:
        return "-"
    if isinstance(value, str) and (not value.strip() or value.strip() != value):
        return html.escape(json.dumps(value))
    if isinstance(value, float):
        return format(value, ".6g")
    if isinstance(value, (list, tuple, dict)):
        return html.escape(", ".join(map(str, value)) if isinstance(value, (list, tuple)) else json.dumps(value))
    return html.escape(str(value))


def _key_table(rows) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td class='l'>{_cell(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _record_tables(record: dict) -> list[str]:
    """run.json as tables: the run's facts, the classes per split, the time of each step (its config
    is the Config section's)."""
    counts = record.get("class_counts") or {}
    seconds = record.get("seconds") or {}
    # "status" is left out: the report is written before the export, so the run's status is run.json's to say
    facts = {k: v for k, v in record.items()
             if k not in ("config", "class_counts", "seconds", "class_names", "ranking", "status")}
    out = ["<h2>Run (run.json)</h2>", _key_table(_flatten(facts))]
    if record.get("ranking"):
        out += _ranking_table(record["ranking"])
    names = list(record.get("class_names") or [])
    if names:
        splits = [split for split in ("train", "val") if counts.get(split)]
        head = "".join(f"<th>{split}</th>" for split in splits)
        rows = "".join(f"<tr><th>{html.escape(str(n))}</th>" + "".join(
            f"<td>{_cell((counts[split] or {}).get(n))}</td>" for split in splits) + "</tr>" for n in names)
        out += ["<h2>Classes</h2>", f"<table><tr><th>class</th>{head}</tr>{rows}</table>"]
    if seconds:
        rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{float(v):.1f}</td></tr>" for k, v in seconds.items())
        out += ["<h2>Time</h2>", f"<table><tr><th>step</th><th>seconds</th></tr>{rows}</table>"]
    return out


def _ranking_table(ranking: list) -> list[str]:
    """The candidates the backbone was chosen from (backbone: auto), best first."""
    columns = ("rank", "backbone", "logme", "probe_accuracy", "seconds", "error")
    head = "".join(f"<th>{c.replace('_', ' ')}</th>" for c in columns)
    rows = "".join("<tr>" + "".join(f"<td class='l'>{_cell(entry.get(c))}</td>" if c in ("backbone", "error") else
                                    f"<td>{_cell(entry.get(c))}</td>" for c in columns) + "</tr>" for entry in ranking)
    return ["<h2>Backbone ranking (ranking.json)</h2>", f"<table><tr>{head}</tr>{rows}</table>"]


def write_report(run_dir: str, *, history: dict, metrics: dict, probabilities: np.ndarray, labels: np.ndarray,
                 class_names: list[str], images_of, config: dict, record: Optional[dict] = None,
                 task=None) -> list[str]:
    """Every picture and report.html of a run; `images_of(rows)` gives the images of validation
    rows (for the mistakes grid). The training curves, then the pictures the `task` (a Task; None:
    single-label) names (`Task.pictures`, one of `PICTURES`). Returns the files written."""
    accuracy_key = task.accuracy_key if task is not None else "accuracy"
    pictures = [plot_training_curves(history, os.path.join(run_dir, CURVES_FILE), accuracy_key,
                                     metrics.get("epoch") if metrics.get("restored_best") else None)]
    draw = PICTURES[task.pictures if task is not None else "classes"]
    pictures += draw(run_dir, probabilities, labels, class_names, metrics, images_of)
    return pictures + [write_html(run_dir, metrics=metrics, config=config, record=record, pictures=pictures)]


def _class_pictures(run_dir, probabilities, labels, class_names, metrics, images_of) -> list[str]:
    """The confusion matrix and the most confidently wrong examples (when `images_of` shows them)."""
    pictures = []
    if metrics.get("confusion_matrix"):
        pictures.append(plot_confusion_matrix(metrics["confusion_matrix"], class_names,
                                              os.path.join(run_dir, CONFUSION_FILE)))
    if len(labels) and images_of is not None:
        rows = confident_mistakes(probabilities, labels)
        pictures.append(plot_mistakes(images_of(rows) if len(rows) else [], rows, probabilities, labels, class_names,
                                      os.path.join(run_dir, MISTAKES_FILE)))
    return pictures


def _label_pictures(run_dir, probabilities, labels, class_names, metrics, images_of) -> list[str]:
    """Each label's precision-recall curve with its threshold."""
    if not len(labels):
        return []
    return [plot_pr_curves(probabilities, labels, class_names, metrics["thresholds"],
                           os.path.join(run_dir, PR_CURVES_FILE))]


def _value_pictures(run_dir, probabilities, labels, class_names, metrics, images_of) -> list[str]:
    """Predicted against true values, and the residuals, of each target."""
    return [plot_regression(probabilities, labels, class_names, os.path.join(run_dir, VALUES_FILE))] if len(
        labels) else []


# The pictures of each kind of answer, by the name a Task gives (`Task.pictures`)
PICTURES = {"classes": _class_pictures, "labels": _label_pictures, "values": _value_pictures}
