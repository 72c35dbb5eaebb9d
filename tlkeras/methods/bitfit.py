"""`stage2.method: bitfit`: only the bias terms of the unfrozen layers train, with the head (BitFit, Ben Zaken et
al. 2022): every kernel stays as it was pretrained. BatchNormalization's beta and gamma train with `train_bn`; a
LayerNormalization's beta is a bias (the paper trains it), its gamma is not.

`unfreeze` chooses the layers as with `full` (default all), so do `layer_decay` and `gradual_unfreeze`; a
backbone whose unfrozen layers hold no bias (a MobileNet's convolutions have none: its BatchNormalization holds
the shifts) is refused before training, with advice.
"""

from __future__ import annotations

from tlkeras.errors import BackboneError
from tlkeras.methods.method import Method, Trained

BIAS_NAMES = ("bias", "beta")  # a variable's own name, or the last part of a hub module variable's


def is_bias(variable) -> bool:
    """Whether a backbone variable is a bias term by its name (Keras: "bias", "beta"; a hub module's
    ".../bias").

    >>> import keras
    >>> layer = keras.layers.Dense(2); layer.build((None, 3))
    >>> [is_bias(v) for v in layer.weights]
    [False, True]
    """
    return variable.name.rsplit("/", 1)[-1].split(":")[0] in BIAS_NAMES


class BitFit(Method):
    name = "bitfit"

    def check(self, model, stage) -> None:
        super().check(model, stage)
        if not _biases(model, stage, stage.unfreeze):
            raise BackboneError(
                f"stage2.method: bitfit: the layers stage2.unfreeze={stage.unfreeze!r} trains hold no bias term "
                "(convolutions followed by BatchNormalization have none: BatchNormalization holds the shifts); set "
                "stage2.train_bn: true to train its beta and gamma, or use method: full.")

    def train(self, model, stage, unfreeze, rate, multipliers) -> Trained:
        from tlkeras.freezing import count_params
        from tlkeras.modelinfo import get_backbone

        layers = self._unfreeze(model, stage, unfreeze)
        kept = _biases(model, stage, unfreeze)
        ids = {id(variable) for _, variable in kept}
        for variable in get_backbone(model).trainable_weights:
            if id(variable) not in ids:
                variable.trainable = False  # the layer trains; its kernel does not
        params = sum(count_params(variable) for _, variable in kept)
        units = list(dict.fromkeys(unit for unit, _ in kept))
        shown = ", ".join(units) if len(units) <= 6 else ", ".join(units[:3]) + ", ..., " + ", ".join(units[-3:])
        share = params / max(layers.backbone_params, 1)
        bn = "; BatchNormalization's beta and gamma train" if stage.train_bn else ""
        return Trained([f"{unit} (biases)" for unit in units],
                       f"BitFit, the bias terms of unfreeze={unfreeze!r} {self._rates(rate, stage, multipliers)}: "
                       f"{params:,} of {layers.backbone_params:,} backbone parameters ({share:.2%}) in "
                       f"{len(units)} unit(s): {shown}{bn}; every kernel stays as pretrained")


def _biases(model, stage, unfreeze) -> list[tuple]:
    """[(unit, variable)] of the weights BitFit trains among those `unfreeze` lets train: bias terms, and the gamma
    of a BatchNormalization that trains (`train_bn`); changes nothing."""
    from tlkeras.freezing import unit_weights

    return [(unit, variable) for unit, variable, batch_norm in unit_weights(model, unfreeze, stage.train_bn)
            if is_bias(variable) or (batch_norm and variable.name == "gamma")]
