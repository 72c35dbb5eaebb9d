"""How long each stage trains when its `epochs` is "auto" (the default): long enough for the data's size.

A fixed number of epochs ignores the data's size: five epochs of 80 training images in batches of 32 are 15 optimizer
steps, five epochs of 8,000 are 1,250. On small data the first is far too short - on the digits transfer task with
10-50 labelled images per class, stage 2 gained 10-18 points of test accuracy from 5 to 40 epochs - while the second
needs no more. So "auto" gives a stage at least `MIN_EPOCHS` epochs and at least its `MIN_STEPS` optimizer steps, and
no more than `MAX_EPOCHS` epochs (measured: benchmarks/few_labels.py, benchmarks/RESULTS.md, issue 38). Stage 1 trains
the head on cached features, so its steps cost next to nothing; stage 2's cost what a step of the backbone costs.

Example:

>>> from tlkeras.config import stage_configs
>>> s1, s2 = stage_configs(None, None)
>>> budget = resolve_budget(s1, s2, steps_per_epoch(80, 32), examples=80, batch_size=32)
>>> budget.steps_per_epoch, budget.stage1.epochs, budget.stage2.epochs
(3, 67, 100)
>>> resolve_budget(s1, s2, steps_per_epoch(20_000, 32)).stage2.epochs
5
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

AUTO = "auto"
MIN_EPOCHS = 5
MIN_STEPS = {"stage1": 200, "stage2": 300}
MAX_EPOCHS = {"stage1": 100, "stage2": 100}


@dataclass(frozen=True)
class Budget:
    """The stages with their epochs resolved, and what was chosen and why (None when nothing was "auto")."""

    stage1: object  # StageConfig
    stage2: object
    steps_per_epoch: int
    reason: Optional[str]

    def as_record(self) -> dict:
        return {"steps_per_epoch": self.steps_per_epoch, "stage1.epochs": self.stage1.epochs,
                "stage2.epochs": self.stage2.epochs, "auto": self.reason is not None}


def is_auto(epochs) -> bool:
    return epochs == AUTO


def auto_epochs(stage: str, steps_per_epoch: int) -> int:
    """The epochs "auto" gives `stage` ("stage1" or "stage2") at this many optimizer steps per epoch.

    >>> auto_epochs("stage2", 3), auto_epochs("stage2", 30), auto_epochs("stage2", 300)
    (100, 10, 5)
    """
    wanted = math.ceil(MIN_STEPS[stage] / max(1, steps_per_epoch))
    return int(min(MAX_EPOCHS[stage], max(MIN_EPOCHS, wanted)))


def resolve_budget(stage1, stage2, steps_per_epoch: Optional[int], *, examples: Optional[int] = None,
                   batch_size: Optional[int] = None) -> Budget:
    """`stage1` and `stage2` (StageConfigs) with each "auto" epochs made a number for `steps_per_epoch` optimizer
    steps per epoch (`examples` in global batches of `batch_size`, for the reason given); a stage given a number
    keeps it. Unknown steps per epoch (data of unknown length) give `MIN_EPOCHS`."""
    chosen = {name: auto_epochs(name, steps_per_epoch) if steps_per_epoch else MIN_EPOCHS
              for name, stage in (("stage1", stage1), ("stage2", stage2)) if is_auto(stage.epochs)}
    if not chosen:
        return Budget(stage1, stage2, steps_per_epoch, None)
    resolved = {name: dataclasses.replace(stage, epochs=chosen.get(name, stage.epochs))
                for name, stage in (("stage1", stage1), ("stage2", stage2))}
    parts = ", ".join(f"{name} {epochs} epochs" + (f" ({epochs * steps_per_epoch} steps)" if steps_per_epoch else "")
                      for name, epochs in chosen.items())
    if steps_per_epoch is None:
        data = "the training data's length is unknown"
    elif examples is not None and batch_size is not None:
        data = (f"{examples} training examples in batches of {batch_size} are {steps_per_epoch} optimizer step(s) "
                "per epoch")
    else:
        data = f"{steps_per_epoch} optimizer step(s) per epoch"
    rule = (f"at least {MIN_EPOCHS} epochs and {' / '.join(str(MIN_STEPS[n]) for n in chosen)} steps, at most "
            f"{' / '.join(str(MAX_EPOCHS[n]) for n in chosen)} epochs")
    reason = f"{data}: {parts} (epochs: auto - {rule}; set stageN.epochs to choose)"
    return Budget(resolved["stage1"], resolved["stage2"], steps_per_epoch, reason)


def steps_per_epoch(examples: int, batch_size: int) -> int:
    return max(1, math.ceil(examples / max(1, batch_size)))
