"""Selective int8: when full-integer quantization changes too many answers, keep the few layers it hurts most in
float and quantize everything else.

TFLite's quantization debugger runs the calibrated model with a NumericVerify op after every quantized layer; here
it measures, per layer, the RMS of the quantization error over the RMS of the layer's float output (how much of the
signal 8 bits lose). TFLite's debugger guide ranks by RMS error over the quantization step instead; on an unsure
MobileNetV2 (benchmarks/RESULTS.md, issue 18) that order needed 60 of 69 layers in float to reach the bar, this one
4. The layers are taken worst first: 1, 2, 4, ... of them are left in float (`denylisted_nodes`) until the model's
answers agree with the Keras model often enough, then the fewest that do is found between the last two counts (the
agreement is not monotone in the count, so this is the fewest on the search's path, not a proven minimum). Inputs and
outputs stay uint8, as in every int8 export, so a caller feeds it as any int8 model.
"""

from __future__ import annotations

import csv
import io
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from tlkeras._logging import get_logger
from tlkeras.export.litert import without_interpreter_warning


@dataclass
class Selective:
    """What the search found: the model, its parity, the layers kept in float and every count tried."""

    content: bytes
    parity: object  # tlkeras.export.parity.Parity
    float_layers: list
    tried: list = field(default_factory=list)  # [{"float_layers": k, "agreement": a}, ...] in the order tried
    layers: int = 0  # quantized layers the debugger measured


def layer_errors(converter) -> tuple[list, bytes]:
    """([(tensor name, RMS error / RMS signal)] of each quantized layer on the converter's representative dataset,
    worst first; the calibrated model, which `quantize` turns into int8 models with some layers in float)."""
    options = tf.lite.experimental.QuantizationDebugOptions(
        layer_direct_compare_metrics={"noise_to_signal": _noise_to_signal})
    images = converter.representative_dataset  # the generator function, read before the debugger's conversion wraps it
    with without_interpreter_warning():  # the debugger makes tf.lite interpreters
        debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=images,
                                                             debug_options=options)
        debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    errors = []
    for row in csv.DictReader(io.StringIO(dump.getvalue())):
        try:
            error = float(row["noise_to_signal"])
        except (KeyError, TypeError, ValueError):
            continue
        if np.isfinite(error):
            errors.append((row["tensor_name"], error))
    return sorted(errors, key=lambda item: -item[1]), debugger.calibrated_model


def _noise_to_signal(float_values, quantized, scale, zero_point) -> float:
    """RMS of the quantization error over RMS of the float values: how much of a layer's signal 8 bits lose."""
    with np.errstate(all="ignore"):  # a tensor the interpreter did not keep reads as garbage: skipped by the caller
        values = np.asarray(float_values, np.float64)
        error = (np.asarray(quantized, np.float64) - zero_point) * scale - values
        signal = np.sqrt(np.mean(np.square(values)))
        return float(np.sqrt(np.mean(np.square(error))) / max(signal, 1e-12))


def layer_name(tensor: str) -> str:
    """The Keras layer a TFLite tensor comes from, as people name it: "tlkeras_mobilenetv2_1/backbone_1/
    block_16_project_BN_1/batchnorm/add_1;..." -> "block_16_project_BN"."""
    parts = tensor.split(";")[0].split("/")
    name = parts[2] if len(parts) > 3 else parts[1] if len(parts) > 1 else parts[0]
    return re.sub(r"_\d+$", "", name)


def quantize(calibrated: bytes, float_layers: list) -> bytes:
    """The int8 model of `calibrated` with `float_layers` (tensor names) left in float; inputs and outputs
    uint8, as plain int8 exports have. The TFLite quantizer and IO rewrite the converter and the debugger call
    themselves (neither has a public entry that takes a denylist and quantizes the inputs and outputs)."""
    from tensorflow.lite.python import convert, util

    quantized = convert.mlir_quantize(calibrated, denylisted_nodes=list(float_layers) or None)  # float IO, then:
    return util.modify_model_io_type(quantized, tf.uint8, tf.uint8)  # int8 -> uint8, as the converter itself does


def search(converter, score: Callable, bar: float) -> Optional[Selective]:
    """The int8 model with the fewest float layers whose `score(content)` (a Parity) reaches `bar`, or None when
    no count does (`converter`: an int8 TFLiteConverter with its representative dataset)."""
    log = get_logger()
    errors, calibrated = layer_errors(converter)
    names = [name for name, _ in errors]
    if not names:
        return None
    tried: list = []
    results: dict = {}

    def reaches(k: int) -> bool:
        if k not in results:
            try:
                content = quantize(calibrated, names[:k])
            except Exception as e:  # noqa: BLE001 - e.g. every layer in float: no int8 model to make
                log.info("int8 with the %d worst of %d layers in float: not made (%s)", k, len(names),
                         (str(e).splitlines() or [""])[0][:120])
                results[k] = None
                return False
            parity = score(content)
            results[k] = (content, parity)
            tried.append({"float_layers": k, "agreement": parity.top1_agreement})
            log.info("int8 with the %d worst of %d layers in float: agreement %.2f%%", k, len(names),
                     100 * parity.top1_agreement)
        return results[k] is not None and results[k][1].top1_agreement >= bar

    low, high = 0, 1  # low fails (0 is plain int8, measured by the caller)
    while not reaches(high):
        if high >= len(names):
            return None
        low, high = high, min(2 * high, len(names))
    while high - low > 1:  # the fewest float layers that still reach the bar
        middle = (low + high) // 2
        if reaches(middle):
            high = middle
        else:
            low = middle
    content, parity = results[high]
    return Selective(content, parity, names[:high], tried, len(names))


def milliseconds_per_image(classifier, pixels: np.ndarray, limit: int = 32) -> float:
    """Median milliseconds of one image through `classifier` (each image alone, as the interpreter runs them)."""
    times = []
    for image in np.asarray(pixels)[:limit]:
        start = time.perf_counter()
        classifier(image[None])
        times.append(time.perf_counter() - start)
    return round(1000 * float(np.median(times)), 3) if times else 0.0
