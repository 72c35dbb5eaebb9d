"""TFLite exports - float32, float16 weights and full-integer int8 - with their parity against the Keras model
measured on validation images and enforced before the file is written.

Layout: `<out_dir>/model_float32.tflite`, `<out_dir>/model_int8.tflite`, `<out_dir>/labels.txt`,
`<out_dir>/parity.json`. Inputs are RGB pixels at the model's image size, batch 1: float32 in
[0, 255], or uint8 for int8 (pixels are integers, so that quantisation loses nothing); outputs
are class probabilities (uint8 with scale 1/256 for int8). The decode and resize happen outside,
with `tlkeras.data.images.decode_and_resize` (`tlkeras predict model.tflite ...` does it).

Thresholds (top-1 agreement with the Keras model on the validation images):
- float32 ≥ 99.5 %: the same graph in float32; only kernel rounding differs (|Δp| ~1e-6), so
  any disagreement beyond a near-tie means a broken conversion.
- float16 ≥ 99 %: weights stored in float16 (half the file), computed in float32; rounding the
  weights to 11 significant bits (BatchNormalization folded into them) moved probabilities by up to
  0.037 on a small MobileNetV2 - enough to flip a close call now and then, not a confident answer.
- int8 ≥ 97 %: 8-bit weights and activations move probabilities by up to a few 1e-2 (Jacob et
  al. 2018 and TFLite's own model zoo report 1-2 points of accuracy lost for MobileNets);
  flipping more than 3 % of answers is more than quantisation noise. A model that is unsure between
  classes (small data, few epochs) flips more; then the layers quantization hurts most stay in float,
  the fewest that reach the bar (`tlkeras.export.selective_int8`), and parity.json says which ones,
  with the size and speed they cost. `thresholds={"int8": ...}` (`--int8-min-agreement`) moves the bar.
"""

from __future__ import annotations

import tempfile
from typing import Iterable, Optional, Sequence

import numpy as np
import tensorflow as tf

from tlkeras._logging import get_logger
from tlkeras.errors import ExportError
from tlkeras.export.litert import interpreter
from tlkeras.export.parity import measure, refusal, require_images, write_if_faithful, write_measured
from tlkeras.model import image_size_of, task_of

THRESHOLDS = {"float32": 0.995, "float16": 0.99, "int8": 0.97}
FILES = {"float32": "model_float32.tflite", "float16": "model_float16.tflite", "int8": "model_int8.tflite"}
REPRESENTATIVE_IMAGES = 100


def _saved_model_for_conversion(model, folder: str) -> str:
    """A SavedModel with one `serve` endpoint: pixels [1, H, W, 3] -> probabilities [1, C]."""
    import keras

    height, width = image_size_of(model)
    archive = keras.export.ExportArchive()
    archive.track(model)
    task = task_of(model)  # asked here, not inside the traced function
    archive.add_endpoint(
        "serve",
        lambda pixels: task.to_probabilities(model(pixels, training=False)),
        input_signature=[tf.TensorSpec([1, height, width, 3], tf.float32, name="pixels")],
    )
    archive.write_out(folder, verbose=False)
    return folder


def _converter(model, kind: str, representative: Optional[np.ndarray], folder: str, integer_io: bool = True):
    """A TFLiteConverter of `model` set up for `kind` (its SavedModel written into `folder`)."""
    converter = tf.lite.TFLiteConverter.from_saved_model(_saved_model_for_conversion(model, folder),
                                                         signature_keys=["serve"])
    if kind == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    if kind == "int8":
        if representative is None or not len(representative):
            raise ExportError("an int8 TFLite model needs representative images (drawn from the training data).")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _images_of(representative)
        if integer_io:
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.uint8
            converter.inference_output_type = tf.uint8
    return converter


def _images_of(pixels: np.ndarray):
    """A representative / debug dataset: each image alone, as the converter's [1, H, W, 3] float32 input."""
    def images():
        for image in pixels:
            yield [np.asarray(image, np.float32)[None]]

    return images


def convert(model, kind: str, representative: Optional[np.ndarray] = None) -> bytes:
    """The TFLite flatbuffer of `model` (`kind` float32, float16 or int8; int8 calibrates on
    `representative` pixels [N, H, W, 3] in [0, 255])."""
    if kind not in FILES:
        raise ExportError(f"TFLite kind {kind!r} is not one of {', '.join(FILES)}.")
    from tlkeras._logging import tflite_lines_hidden

    with tempfile.TemporaryDirectory(prefix="tlkeras-tflite-") as folder, tflite_lines_hidden():
        return _converter(model, kind, representative, folder).convert()


class TFLiteClassifier:
    """Runs a .tflite classifier on pixels [N, H, W, 3] in [0, 255]; returns probabilities [N, C]."""

    def __init__(self, path_or_content):
        kwargs = {"model_path": path_or_content} if isinstance(path_or_content, str) else {
            "model_content": path_or_content}
        from tlkeras._logging import tflite_lines_hidden

        with tflite_lines_hidden():  # the XNNPACK delegate says it was made as the tensors are allocated
            self.interpreter = interpreter(**kwargs)
            self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.image_size = tuple(int(d) for d in self.input["shape"][1:3])

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        out = []
        for image in np.asarray(pixels, np.float32):
            x = image[None]
            if self.input["dtype"] != np.float32:
                scale, zero = self.input["quantization"]
                bounds = np.iinfo(self.input["dtype"])  # uint8 0..255, int8 -128..127
                x = np.clip(np.round(x / scale + zero), bounds.min, bounds.max).astype(self.input["dtype"])
            self.interpreter.set_tensor(self.input["index"], x)
            self.interpreter.invoke()
            y = self.interpreter.get_tensor(self.output["index"])[0]
            if self.output["dtype"] != np.float32:
                scale, zero = self.output["quantization"]
                y = (y.astype(np.float32) - zero) * scale
            out.append(y)
        return np.stack(out) if out else np.zeros((0, 0), np.float32)


def export_tflite(model, out_dir: str, class_names: Sequence[str], *, kinds: Iterable[str] = ("float32",),
                  check_pixels: np.ndarray, representative: Optional[np.ndarray] = None,
                  thresholds: Optional[dict] = None) -> dict:
    """Convert `model` to each TFLite kind, measure parity on `check_pixels` (validation images,
    [N, H, W, 3] in [0, 255]) and write the files that pass into `out_dir`; returns
    {kind: Parity}. A kind below its threshold (`THRESHOLDS`, or `thresholds[kind]`) raises
    ExportError and writes nothing of it.

    Example:

    >>> import tempfile, numpy as np, tlkeras
    >>> model = tlkeras.build_model("mobilenetv2", 2, image_size=32, weights=None,
    ...                             backbone_options={"alpha": 0.35})
    >>> pixels = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    >>> out = export_tflite(model, tempfile.mkdtemp(), ["a", "b"], check_pixels=pixels)
    >>> out["float32"].top1_agreement
    1.0
    """
    results = {}
    for kind in kinds:
        content = convert(model, kind, representative)
        bar = (thresholds or {}).get(kind, THRESHOLDS[kind])
        what = f"{kind} TFLite"
        if kind != "int8":
            results[kind] = write_if_faithful(model, TFLiteClassifier(content), content, out_dir, FILES[kind],
                                              check_pixels, what, kind, bar, class_names)
            continue
        require_images(check_pixels, what)
        parity = measure(model, TFLiteClassifier(content), check_pixels, kind, bar)
        tried = ""
        if parity.top1_agreement < bar:
            found, tried = _selective_int8(model, content, parity, representative, check_pixels, bar)
            if found is not None:
                content, parity = found.content, found.parity
        if parity.top1_agreement < bar:
            raise ExportError(f"{refusal(parity, what, FILES[kind])}{tried} If answers that change this often are "
                              f"acceptable for your use, lower the bar with --int8-min-agreement (now {bar:.3g}; "
                              "recorded in the model card).")
        results[kind] = write_measured(parity, content, out_dir, FILES[kind], class_names, what)
    return results


def _selective_int8(model, plain: bytes, plain_parity, representative, check_pixels, bar):
    """(Selective or None, what was tried as a sentence): plain int8 fell short, so keep its worst layers in float."""
    from tlkeras.export import selective_int8

    def score(content):
        return measure(model, TFLiteClassifier(content), check_pixels, "int8", bar)

    from tlkeras._logging import tflite_lines_hidden

    with tempfile.TemporaryDirectory(prefix="tlkeras-int8-") as folder, tflite_lines_hidden():
        converter = _converter(model, "int8", representative, folder, integer_io=False)
        found = selective_int8.search(converter, score, bar)
    plain_text = f"plain int8 agreed on {plain_parity.top1_agreement:.1%}"
    if found is None:
        return None, (f" Keeping the layers quantization hurts most in float did not reach the bar either ({plain_text}; "
                      "every count of float layers up to all of them was tried).")
    names = [selective_int8.layer_name(n) for n in found.float_layers]
    cost = {
        "float_layers": names, "float_tensors": found.float_layers, "layers_measured": found.layers,
        "tried": found.tried, "plain_int8_agreement": plain_parity.top1_agreement,
        "size_bytes": len(found.content), "plain_int8_size_bytes": len(plain),
        "ms_per_image": selective_int8.milliseconds_per_image(TFLiteClassifier(found.content), check_pixels),
        "plain_int8_ms_per_image": selective_int8.milliseconds_per_image(TFLiteClassifier(plain), check_pixels),
    }
    found.parity.selective = cost
    get_logger().info(
        "int8: %s (below %.1f%%); with %d of its %d layers kept in float (%s) it agrees on %.1f%%: %.1f kB against "
        "%.1f kB, %.2f ms per image against %.2f", plain_text, 100 * bar, len(names), found.layers, ", ".join(names),
        100 * found.parity.top1_agreement, cost["size_bytes"] / 1024, cost["plain_int8_size_bytes"] / 1024,
        cost["ms_per_image"], cost["plain_int8_ms_per_image"])
    return found, ""
