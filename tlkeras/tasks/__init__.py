"""Tasks: the kinds of problem tlkeras solves, in a registry (see `tlkeras.tasks.task.Task`).

>>> get_task("multi_label").output_units(4)
4
>>> get_task("multilabel")
Traceback (most recent call last):
...
ValueError: task 'multilabel' is not one of single_label, multi_label. Did you mean 'multi_label'?
"""

from __future__ import annotations

from tlkeras.errors import did_you_mean
from tlkeras.tasks.multi_label import MultiLabel
from tlkeras.tasks.single_label import SingleLabel
from tlkeras.tasks.task import Task

TASKS: dict[str, Task] = {
    "single_label": SingleLabel(),
    "multi_label": MultiLabel(),
}
TASK_CHOICES = ("auto", *TASKS)


def get_task(name: "str | Task") -> Task:
    """The Task registered under `name` (a Task is returned as it is)."""
    if isinstance(name, Task):
        return name
    if name not in TASKS:
        raise ValueError(f"task {name!r} is not one of {', '.join(TASKS)}.{did_you_mean(str(name), list(TASKS))}")
    return TASKS[name]


def task_of_metrics(metrics: dict) -> Task:
    """The Task whose metrics these are (the one whose headline number they hold; else single-label).

    >>> task_of_metrics({"count": 3, "micro_f1": 0.5}).name
    'multi_label'
    """
    found = [task for task in TASKS.values() if metrics.get(task.headline_key) is not None]
    return found[0] if found else TASKS["single_label"]


def headline(metrics: dict):
    """(name, value) of the headline number of a Task's metrics ("accuracy", "micro-F1"), or None.

    >>> headline({"count": 3, "micro_f1": 0.5})
    ('micro-F1', 0.5)
    """
    task = task_of_metrics(metrics)
    value = metrics.get(task.headline_key)
    return None if value is None else (task.headline_name, value)


__all__ = ["TASKS", "TASK_CHOICES", "Task", "get_task", "headline", "task_of_metrics"]
