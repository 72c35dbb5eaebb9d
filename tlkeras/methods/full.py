"""`stage2.method: full`: train what `unfreeze` says - the top of the backbone, whole layers - at layer-wise rates."""

from __future__ import annotations

from tlkeras.methods.method import Method, Trained


class Full(Method):
    """Every weight of the unfrozen layers trains (BatchNormalization only with `train_bn`).

    >>> import tlkeras
    >>> from tlkeras.config import StageConfig
    >>> model = tlkeras.build_model("mobilenetv2", 2, image_size=32, weights=None,
    ...                             backbone_options={"alpha": 0.35})
    >>> trained = Full().train(model, StageConfig(unfreeze="blocks:1"), "blocks:1", 1e-3, None)
    >>> trained.units[:2]
    ['block_16_expand', 'block_16_depthwise']
    """

    name = "full"

    def train(self, model, stage, unfreeze, rate, multipliers) -> Trained:
        layers = self._unfreeze(model, stage, unfreeze)
        return Trained(layers.layers, f"unfreeze={unfreeze!r} {self._rates(rate, stage, multipliers)}: "
                                      f"{layers.describe()}")
