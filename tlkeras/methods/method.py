"""The stage-2 method role: how stage 2 trains the backbone.

Stage 1 always trains the head on the frozen backbone. Stage 2 asks its method (`stage2.method`, looked up in
`tlkeras.methods.METHODS`), never branches on its name:

- `check_settings(stage)`: refuse settings that cannot go together, before TensorFlow is imported (a ConfigError);
  `warnings(stage, given)`: settings the user gave that the method ignores, said once before the run;
- `prepare(model, stage)`: change the model before the run's weights are indexed (LoRA puts its adapters on);
- `check(model, stage)`: refuse settings that do not fit this model, changing nothing, before any training;
- `cut(model, stage)`: the index of the lowest backbone layer that may train: what lies below is cached;
- `phases(model, stage)`: [(unfreeze value, epochs), ...]: one phase, or one more block each (gradual);
- `multipliers(model, stage)`: {variable path: rate factor} (layer-wise rates), or None for one rate;
- `train(model, stage, unfreeze, rate, multipliers)`: make what trains in a phase trainable (recompile after);
  returns `Trained`: the units to list in stage2_trainable_layers.txt and the log line;
- `recomputes(stage)`: whether the backward pass recomputes activations by default (`stage2.recompute`);
- `finish(model, run_dir)`: after training and restoring the best epoch, before model.keras and the exports are
  written (LoRA folds its adapters into the kernels); a dict for run.json under the method's name, or None.

A new method is a module with a `Method` subclass and a line in `tlkeras.methods.METHODS` (and its name among
`tlkeras.config.METHODS`, which config checks read without importing the methods).
The methods import Keras and the freezing machinery inside their functions: `check_settings` and `warnings` run
where TensorFlow is not yet imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class Trained:
    """What a stage-2 phase trains: `units` (backbone layers, a hub module's variables, or adapted layers, as
    stage2_trainable_layers.txt lists them) and `summary` (the log line after "stage 2: ")."""

    units: list
    summary: str


class Method:
    """The interface, and the behaviour of a method that trains whole layers (see `Full`)."""

    #: registry name, as stage2.method spells it
    name: str = ""
    #: recompute activations in the backward pass when stage2.recompute is null
    recompute_default: bool = False

    def check_settings(self, stage) -> None:
        """Raise ConfigError for settings this method cannot take together (no model, no TensorFlow)."""

    def warnings(self, stage, given: set) -> list[str]:
        """Lines to warn with, before the run, for settings in `given` ("stage2.unfreeze", ...) it ignores."""
        return []

    def prepare(self, model, stage) -> None:
        """Change `model` before the run indexes its weights (e.g. add adapter weights)."""

    def check(self, model, stage) -> None:
        """Refuse settings that do not fit `model` (an unknown layer, a rank too large), changing nothing."""
        from tlkeras import freezing
        from tlkeras.freezing import unfreeze_phases

        freezing.plan_cut(model, stage.unfreeze, train_bn=stage.train_bn)
        unfreeze_phases(model, stage)

    def cut(self, model, stage) -> int:
        from tlkeras import freezing

        return freezing.plan_cut(model, stage.unfreeze, train_bn=stage.train_bn)[0]

    def phases(self, model, stage) -> list[tuple]:
        from tlkeras.freezing import unfreeze_phases

        return unfreeze_phases(model, stage)

    def multipliers(self, model, stage) -> Optional[dict]:
        from tlkeras import freezing

        if stage.layer_decay is not None and stage.layer_decay < 1:
            return freezing.layer_multipliers(model, stage.layer_decay)
        return None

    def train(self, model, stage, unfreeze, rate: float, multipliers: Optional[dict]) -> Trained:
        raise NotImplementedError

    def recomputes(self, stage) -> bool:
        return self.recompute_default if stage.recompute is None else bool(stage.recompute)

    def finish(self, model, run_dir: str) -> Optional[dict]:
        return None

    # --- shared by the methods that unfreeze layers ---

    def _unfreeze(self, model, stage, unfreeze):
        from tlkeras import freezing

        return freezing.unfreeze(model, unfreeze, train_bn=stage.train_bn,
                                 bn_momentum=stage.bn_momentum if stage.train_bn else None)

    @staticmethod
    def _rates(rate: float, stage, multipliers: Optional[dict]) -> str:
        decay = f", layer_decay {stage.layer_decay}" if multipliers else ""
        return f"at learning rate {rate:g}{decay}"
