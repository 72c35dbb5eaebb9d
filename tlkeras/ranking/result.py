"""A ranking's result: the entries in rank order, the candidates that could not run, the files."""

from __future__ import annotations

import os
from typing import Optional

from tlkeras._logging import get_logger
from tlkeras.atomic import atomic_path, write_json_atomic

RANKING_FILE = "ranking.json"
CHART_FILE = "ranking.png"
# The scores a ranking can be sorted by, and how they are shown.
SCORES = {"logme": "LogME", "probe": "the linear probe's validation score"}
# What rank_backbones and backbone: auto sort by: "auto" = LogME when every class (every label) has at least
# LOGME_MIN_PER_CLASS training examples, else the probe. Measured (benchmarks/RESULTS.md, issue 19), Kendall's tau with
# the fine-tuned accuracy of 7 candidates: LogME 0.90-1.00 with 144 or more images per class but 0.10 with 20; the
# probe 0.59-0.69 and 0.85. The threshold lies between those two measured points; 50 is not pinned down further.
DEFAULT_SCORE = "auto"
LOGME_MIN_PER_CLASS = 50


def choose_score(by: str, smallest_class: int, probe: bool) -> tuple[str, str]:
    """(the score to sort by, why) for a `by` of "auto", "logme" or "probe".

    >>> choose_score("auto", 144, True)[0], choose_score("auto", 20, True)[0], choose_score("auto", 20, False)[0]
    ('logme', 'probe', 'logme')
    """
    if by != "auto":
        return by, "as asked"
    if not probe:
        return "logme", "the probe is off"
    if smallest_class >= LOGME_MIN_PER_CLASS:
        return "logme", (f"every class has at least {LOGME_MIN_PER_CLASS} training examples (the smallest "
                         f"{smallest_class}): LogME predicted fine-tuned accuracy best there")
    return "probe", (f"a class has only {smallest_class} training examples (under {LOGME_MIN_PER_CLASS}, LogME "
                     "was unreliable): the probe")


class Ranking:
    """Entries best first by `by` ("probe": the probe's score, ties by LogME; or "logme"; `why`: the reason it
    was chosen); `failed` lists {backbone, reason}.

    >>> r = Ranking([{"backbone": "a", "logme": -0.9, "probe_accuracy": 0.8, "seconds": 3.0},
    ...              {"backbone": "b", "logme": -0.4, "probe_accuracy": 0.7, "seconds": 4.0}],
    ...             [{"backbone": "c", "reason": "unknown"}])
    >>> [e["backbone"] for e in r.entries], r.recommended["backbone"]
    (['a', 'b'], 'a')
    >>> [e["backbone"] for e in Ranking(r.entries, by="logme").entries]
    ['b', 'a']
    """

    def __init__(self, entries: list, failed: Optional[list] = None, *, by: str = "probe", why: str = ""):
        self.by, self.why = by, why
        self.entries = sorted((dict(e) for e in entries), key=self._key)
        for rank, entry in enumerate(self.entries, 1):
            entry["rank"] = rank
            entry["recommended"] = rank == 1
        self.failed = [dict(f) for f in failed or []]

    @classmethod
    def from_list(cls, items: list) -> "Ranking":
        """A Ranking from ranking.json's list (`as_list`)."""
        entries = [{k: v for k, v in item.items() if k != "ranked_by"} for item in items if item.get("rank")]
        failed = [{"backbone": item["backbone"], "reason": item["error"]} for item in items if not item.get("rank")]
        by = next((item["ranked_by"] for item in items if item.get("ranked_by")), "probe")
        return cls(entries, failed, by=by)

    def _key(self, entry: dict):
        logme = entry.get("logme")
        logme = float("-inf") if logme is None else logme
        if self.by == "probe":
            probe = entry.get("probe_accuracy")
            return (probe is None, -(probe or 0.0), -logme)
        return (-logme,)

    @property
    def recommended(self) -> Optional[dict]:
        """The best entry (None when no candidate could run)."""
        return self.entries[0] if self.entries else None

    def describe(self, entry: dict) -> str:
        probe = entry.get("probe_accuracy")
        probe_text = f", probe {entry.get('probe_metric', 'accuracy')} {probe:.4f}" if probe is not None else ""
        return f"best by {SCORES[self.by]}: LogME {entry['logme']:.4f}{probe_text}"

    def as_list(self) -> list:
        """ranking.json: the entries in rank order, then the candidates that could not run (rank null)."""
        failed = [{"backbone": f["backbone"], "rank": None, "recommended": False, "logme": None,
                   "probe_accuracy": None, "seconds": None, "error": f["reason"]} for f in self.failed]
        return [{**e, "ranked_by": self.by} for e in self.entries] + failed

    def table(self) -> str:
        """The ranking as a text table, the candidates that could not run below it."""
        rows = [("rank", "backbone", "LogME", "probe", "seconds", "peak MB")]
        for e in self.entries:
            probe = e.get("probe_accuracy")
            rows.append((str(e["rank"]), e["backbone"] + (" *" if e["recommended"] else ""), f"{e['logme']:.4f}",
                         "-" if probe is None else f"{probe:.4f}", f"{e['seconds']:.1f}",
                         "-" if e.get("peak_rss_mb") is None else f"{e['peak_rss_mb']:.0f}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) if i == 1 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
                 for r in rows]
        if self.entries:
            probe_metric = self.entries[0].get("probe_metric", "accuracy")
            lines.append(f"sorted by {SCORES[self.by]}{f' ({self.why})' if self.why and self.why != 'as asked' else ''}; "
                         f"probe: validation {probe_metric} of the head trained on the frozen features; * recommended")
        else:
            lines.append("no candidate could be ranked")
        lines += [f"not ranked: {f['backbone']}: {f['reason']}" for f in self.failed]
        return "\n".join(lines)

    def write(self, folder: str) -> list[str]:
        """ranking.json and ranking.png (a bar chart of both scores) into `folder`; the paths written."""
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, RANKING_FILE)
        write_json_atomic(path, self.as_list())
        written = [path]
        chart = _chart(self, os.path.join(folder, CHART_FILE))
        if chart:
            written.append(chart)
        return written


def _chart(ranking: Ranking, path: str) -> Optional[str]:
    if not ranking.entries:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        get_logger().warning("matplotlib is not installed: no ranking chart")
        return None
    entries = list(reversed(ranking.entries))  # best at the top of a horizontal bar chart
    names = [e["backbone"] for e in entries]
    probes = [e.get("probe_accuracy") for e in entries]
    panels = [("LogME (higher is better)", [e["logme"] for e in entries])]
    if any(p is not None for p in probes):
        metric = ranking.entries[0].get("probe_metric", "accuracy")
        panels.append((f"linear probe: validation {metric}", [p if p is not None else 0.0 for p in probes]))
    height = 1.2 + 0.35 * len(entries)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels) + 1.5, height), dpi=100, squeeze=False)
    for ax, (title, values) in zip(axes[0], panels):
        colours = ["tab:green" if e["recommended"] else "tab:blue" for e in entries]
        ax.barh(range(len(entries)), values, color=colours)
        ax.set_yticks(range(len(entries)))
        ax.set_yticklabels(names if ax is axes[0][0] else [""] * len(entries))
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"backbones ranked by {SCORES[ranking.by]} (green: recommended)", fontsize=10)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return path
