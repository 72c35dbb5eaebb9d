"""A search's pictures and tune.html: the optimisation history, what each searched key weighs (Optuna's fANOVA
importances), and the score against each key's values."""

from __future__ import annotations

import html
import math
import os

import numpy as np

from tlkeras.atomic import write_text_atomic
from tlkeras.report import _embedded, _figure, _key_table, _save

HISTORY_FILE = "tune_history.png"
IMPORTANCE_FILE = "tune_importances.png"
PARAMS_FILE = "tune_params.png"
REPORT_FILE = "tune.html"


def importances(study) -> dict:
    """{key: share of the score's variance it explains} by Optuna's fANOVA over the complete trials; {} when there
    are too few of them (or every score is the same) to say."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 3 or len({t.value for t in complete}) < 2:
        return {}
    try:
        found = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):  # a key with one value in every trial, and the like
        return {}
    return {key: round(float(value), 4) for key, value in found.items()}


def plot_history(rows: list, metric: str, path: str) -> str:
    """Each finished trial's score in order, the best so far as a line, pruned trials marked at the bottom."""
    fig = _figure(8, 3.5)
    ax = fig.add_subplot(1, 1, 1)
    done = [(r["number"], r["value"]) for r in rows if r["value"] is not None]
    if done:
        numbers, values = zip(*done)
        ax.plot(numbers, values, "o", markersize=4, label="trial")
        ax.plot(numbers, np.maximum.accumulate(values), "-", color="C3", label="best so far")
    pruned = [r["number"] for r in rows if r["state"] == "pruned"]
    if pruned and done:
        ax.plot(pruned, [min(v for _, v in done)] * len(pruned), "x", color="grey", label="pruned")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {metric}")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.set_title("optimisation history")
    return _save(fig, path)


def plot_importances(found: dict, path: str) -> str:
    fig = _figure(7, 0.5 * max(len(found), 2) + 1)
    ax = fig.add_subplot(1, 1, 1)
    keys = sorted(found, key=found.get)
    ax.barh(keys, [found[k] for k in keys])
    ax.set_xlabel("share of the score's variance (fANOVA)")
    ax.set_title("what each searched key weighs")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return _save(fig, path)


def plot_params(rows: list, keys: list, metric: str, path: str) -> str:
    """The score of each complete trial against each key's value (a log axis for log-scale ranges)."""
    cols = min(3, len(keys)) or 1
    grid_rows = math.ceil(len(keys) / cols) or 1
    fig = _figure(3.6 * cols, 3.0 * grid_rows)
    done = [r for r in rows if r["value"] is not None]
    for index, key in enumerate(keys):
        ax = fig.add_subplot(grid_rows, cols, index + 1)
        values = [r[key] for r in done]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        positions = values if numeric else [str(v) for v in values]
        ax.scatter(positions, [r["value"] for r in done], s=14, alpha=0.7)
        if numeric and values and min(values) > 0 and max(values) / min(values) > 50:
            ax.set_xscale("log")
        ax.set_xlabel(key, fontsize=8)
        ax.set_ylabel(metric, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def write_tune_report(folder: str, rows: list, keys: list, metric: str, found: dict, summary: dict) -> list[str]:
    """The pictures and tune.html (the best settings, the trials, the pictures) in `folder`; the files written."""
    pictures = [plot_history(rows, metric, os.path.join(folder, HISTORY_FILE))]
    if found:
        pictures.append(plot_importances(found, os.path.join(folder, IMPORTANCE_FILE)))
    if keys and any(r["value"] is not None for r in rows):
        pictures.append(plot_params(rows, keys, metric, os.path.join(folder, PARAMS_FILE)))
    esc = html.escape
    best = summary["best"]
    columns = ["number", "state", "value", *keys, "epochs", "backbone_passes", "seconds"]
    table = ["<table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in columns) + "</tr>"]
    for r in sorted(rows, key=lambda r: (r["value"] is None, -(r["value"] or 0))):
        table.append("<tr>" + "".join(f"<td>{esc(_cell(r.get(c)))}</td>" for c in columns) + "</tr>")
    table.append("</table>")
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>tlkeras search</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
             "th{background:#f3f3f3}td.l,th{text-align:left}img{max-width:100%}</style></head><body>",
             f"<h1>tlkeras search: {esc(os.path.basename(os.path.abspath(folder)))}</h1>",
             f"<h2>Best: trial {best['trial']}, validation {esc(metric)} {best['value']:.4f}</h2>",
             _key_table(list(best["params"].items())),
             *(["<h2>Importances (fANOVA)</h2>", _key_table(list(found.items()))] if found else []),
             *[f"<h2>{esc(os.path.splitext(os.path.basename(p))[0].replace('_', ' '))}</h2>{_embedded(p)}"
               for p in pictures],
             "<h2>Trials</h2>", *table, "</body></html>"]
    path = os.path.join(folder, REPORT_FILE)
    write_text_atomic(path, "\n".join(parts))
    return pictures + [path]


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
