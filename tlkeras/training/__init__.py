"""Two-stage fine-tuning. A stage is: freeze/unfreeze -> compile -> fit.

Stage 1 trains the head on a frozen backbone; stage 2 unfreezes what `unfreeze` says (by default
all of it, each block at a rate falling with its depth: `layer_decay`, see `tlkeras.optimizers`),
optionally a block at a time (`gradual_unfreeze`), and recompiles. Stage 2 counts epochs on from
stage 1 (`initial_epoch`), so the history, the logs and the checkpoints read as one run.

What stays frozen is computed once, not every epoch (see `tlkeras.caching`): stage 1 trains the
head on cached backbone features, stage 2 trains the top of the backbone on cached activations
at the unfreeze cut - whenever the training inputs are not randomly augmented.

Modules, one job each: `finetune` (the two stages, as the plan it carries out), `plan` (what is
cached, the phases of a gradual stage 2), `parts` (what one stage fits, on which data), `runner`
(compile and fit one stage with the Task's loss and metrics, the NaN guard, resume bookkeeping) and
`callbacks` (history, best checkpoint, NaN guard).
"""

from tlkeras.training.callbacks import BEST_WEIGHTS, BestCheckpoint, RunHistory, StopOnNaN, current_learning_rate
from tlkeras.training.finetune import FinetuneHistory, finetune
from tlkeras.training.plan import CachePlan, plan_caching, unfreeze_phases
from tlkeras.training.runner import run_stage

__all__ = ["BEST_WEIGHTS", "BestCheckpoint", "CachePlan", "FinetuneHistory", "RunHistory", "StopOnNaN",
           "current_learning_rate", "finetune", "plan_caching", "run_stage", "unfreeze_phases"]
