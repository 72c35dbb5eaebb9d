"""Tasks: the kinds of problem tlkeras solves, in a registry (see `tlkeras.tasks.task.Task`).

>>> get_task("multi_label").output_units(4)
4
>>> get_task("multilabel")
Traceback (most recent call last):
...
ValueError: task 'multilabel' is not one of single_label, multi_label, regression. Did you mean 'multi_label'?
"""

from __future__ import annotations

from tlkeras.errors import did_you_mean
from tlkeras.tasks.labels import auto_task
from tlkeras.tasks.multi_label import MultiLabel
from tlkeras.tasks.regression import Regression
from tlkeras.tasks.single_label import SingleLabel
from tlkeras.tasks.task import Task

TASKS: dict[str, Task] = {
    "single_label": SingleLabel(),
    "multi_label": MultiLabel(),
    "regression": Regression(),
}
TASK_CHOICES = ("auto", *TASKS)


def get_task(name: "str | Task") -> Task:
    """The Task registered under `name` (a Task is returned as it is)."""
    if isinstance(name, Task):
        return name
    if name not in TASKS:
        raise ValueError(f"task {name!r} is not one of {', '.join(TASKS)}.{did_you_mean(str(name), list(TASKS))}")
    return TASKS[name]


def resolve_task(setting: str, raw, key: str) -> Task:
    """The Task for `setting` ("auto", "single_label", "multi_label") and these raw labels; auto says
    why it chose what it chose (`tlkeras.tasks.labels.auto_task`).

    >>> resolve_task("auto", [["beach", "sunset"], ["beach"]], "data").name
    'multi_label'
    """
    return get_task(auto_task(raw, key) if setting == "auto" else setting)


def encode_examples(examples, setting: str, key: str, class_names, columns=None):
    """Resolve the Task for `setting` from `examples`' raw labels and encode them in place with
    `class_names` (None: found from the labels, or named after the table's label `columns` where the Task
    names its outputs so: a regression's targets); returns (task, class names)."""
    task = resolve_task(setting, examples.labels, key)
    if class_names is None and columns:
        class_names = task.names_of_columns(columns)
    examples.labels, names = task.encode_labels(examples.labels, key, class_names)
    return task, names


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


__all__ = ["TASKS", "TASK_CHOICES", "Task", "encode_examples", "get_task", "headline", "resolve_task",
           "task_of_metrics"]
