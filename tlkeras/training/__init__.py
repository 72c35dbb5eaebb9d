"""Two-stage fine-tuning (`finetune`), split by job: `finetune` (the two stages, as the plan it
carries out), `plan` (what is cached, the phases of a gradual stage 2), `parts` (what one stage
fits, on which data), `runner` (compile and fit one stage with the Task's loss and metrics, the NaN
guard, resume bookkeeping) and `callbacks` (history, best checkpoint, NaN guard).
"""

from tlkeras.training.callbacks import BEST_WEIGHTS, BestCheckpoint, RunHistory, StopOnNaN, current_learning_rate
from tlkeras.training.finetune import FinetuneHistory, check_stages, finetune
from tlkeras.freezing import unfreeze_phases  # a gradual stage 2's phases: the backbone's units decide
from tlkeras.training.plan import CachePlan, plan_caching
from tlkeras.training.runner import run_stage

__all__ = ["BEST_WEIGHTS", "BestCheckpoint", "CachePlan", "FinetuneHistory", "RunHistory", "StopOnNaN",
           "check_stages", "current_learning_rate", "finetune", "plan_caching", "run_stage", "unfreeze_phases"]
