"""`stage2.method: lora`: low-rank adapters on the `lora_targets` layers train, with the head; nothing else does.
The adapters fold into the kernels when the run ends (`tlkeras.lora`)."""

from __future__ import annotations

import os

from tlkeras.errors import ConfigError
from tlkeras.methods.method import Method, Trained
from tlkeras.rundir import LORA_FILE  # the adapters and the head alone, in the run directory


class Lora(Method):
    """LoRA (Hu et al. 2022) on Keras 3's own adapters; see `tlkeras.lora`."""

    name = "lora"
    recompute_default = True  # the frozen kernels need no activations kept for their gradients

    def check_settings(self, stage) -> None:
        if stage.gradual_unfreeze:
            raise ConfigError("stage2.gradual_unfreeze: does not apply with stage2.method: lora (the adapters train "
                              "from the first epoch of stage 2); set it to 0, or use method: full.")

    def warnings(self, stage, given: set) -> list[str]:
        if "stage2.unfreeze" not in given:
            return []
        return [f"stage2.unfreeze: {stage.unfreeze!r} has no effect with stage2.method: lora (only the adapters and "
                "the head train; stage2.lora_targets says which layers get adapters); use method: full to unfreeze "
                "layers."]

    def prepare(self, model, stage) -> None:
        from tlkeras import lora

        lora.enable_lora(model, stage.lora_rank, stage.lora_alpha, stage.lora_patterns)

    def check(self, model, stage) -> None:
        from tlkeras import lora

        lora.check_rank(lora.find_targets(model, stage.lora_patterns), stage.lora_rank)

    def cut(self, model, stage) -> int:  # below the lowest adapted layer nothing trains
        from tlkeras import lora

        return lora.cut_index(model)

    def phases(self, model, stage) -> list[tuple]:
        return [(None, stage.epochs)]

    def multipliers(self, model, stage):
        return None  # one rate: the adapters are not ranked by depth

    def train(self, model, stage, unfreeze, rate, multipliers) -> Trained:
        from tlkeras import lora

        adapters = lora.train_adapters(model)
        return Trained([f"{path} (LoRA adapters)" for path in adapters.targets],
                       f"{adapters.describe()}, at learning rate {rate:g} (one rate: layer_decay does not apply)")

    def finish(self, model, run_dir: str):
        from tlkeras import lora
        from tlkeras._logging import get_logger

        path = os.path.join(run_dir, LORA_FILE)
        adapters = lora.merge_lora(model, path)  # model.keras and the exports: plain kernels
        if adapters is None:
            return None
        get_logger().info("LoRA: adapters folded into the kernels; the adapters and the head alone: %s", path)
        return {**adapters.as_record(), "file": LORA_FILE}
