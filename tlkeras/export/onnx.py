"""ONNX export through tf2onnx (extra `onnx`), parity checked with onnxruntime before the file lands.

Layout: `<out_dir>/model.onnx` (input `pixels`: float32 [N, H, W, 3] RGB in [0, 255] at the model's
image size, any batch; output: class probabilities [N, C]), `<out_dir>/labels.txt`,
`<out_dir>/parity.json`. Threshold: top-1 agreement ≥ 99.5 % with the Keras model on the validation
images - the same float32 graph run by another engine; kernels differ only by rounding (|Δp| ~1e-6).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from tlkeras.errors import ExportError
from tlkeras.export.parity import write_if_faithful
from tlkeras.model import image_size_of, task_of

THRESHOLD = 0.995
FILE = "model.onnx"
OPSET = 17


def _libraries():
    try:
        import onnxruntime
        import tf2onnx
    except ImportError as e:
        raise ExportError('ONNX export needs tf2onnx and onnxruntime: pip install "tlkeras[onnx]"') from e
    return tf2onnx, onnxruntime


def convert(model) -> bytes:
    """The ONNX model (serialised) of `model`: pixels -> probabilities, dynamic batch."""
    tf2onnx, _ = _libraries()
    height, width = image_size_of(model)
    spec = (tf.TensorSpec([None, height, width, 3], tf.float32, name="pixels"),)
    task = task_of(model)  # asked here, not inside the traced function
    fn = tf.function(lambda pixels: task.to_probabilities(model(pixels, training=False)), input_signature=spec)
    # Frozen first: tf2onnx.convert.from_function (and Keras's own ONNX export) turn captured tensors that are not
    # variables - keras.applications EfficientNet's Normalization mean and variance - into extra graph inputs,
    # which no caller feeds (benchmarks/RESULTS.md, issue 18).
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    logger = tf.get_logger()  # the freezing and tf2onnx's graph tools log TF1 deprecation notices: not the user's
    level = logger.level
    logger.setLevel("ERROR")
    try:
        frozen = convert_variables_to_constants_v2(fn.get_concrete_function())
        proto, _ = tf2onnx.convert.from_graph_def(
            frozen.graph.as_graph_def(), input_names=[t.name for t in frozen.inputs],
            output_names=[t.name for t in frozen.outputs], opset=OPSET)
    finally:
        logger.setLevel(level)
    _rename_input(proto, frozen.inputs[0].name, "pixels")  # "pixels:0" from a graph, "pixels" as before
    return proto.SerializeToString()


def _rename_input(proto, old: str, new: str) -> None:
    for graph_input in proto.graph.input:
        if graph_input.name == old:
            graph_input.name = new
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


class ONNXClassifier:
    """Runs an .onnx classifier with onnxruntime on pixels [N, H, W, 3] in [0, 255]."""

    def __init__(self, path_or_content):
        _, ort = _libraries()
        self.session = ort.InferenceSession(path_or_content, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0]
        self.image_size = tuple(int(d) for d in self.input.shape[1:3])

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input.name: np.asarray(pixels, np.float32)})[0]


def export_onnx(model, out_dir: str, class_names: Sequence[str], *, check_pixels: np.ndarray):
    """Convert, check on `check_pixels` (validation images), write `out_dir/model.onnx`; returns the Parity.

    Example:

    >>> import tempfile, numpy as np, tlkeras
    >>> model = tlkeras.build_model("mobilenetv2", 2, image_size=32, weights=None,
    ...                             backbone_options={"alpha": 0.35})
    >>> pixels = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    >>> export_onnx(model, tempfile.mkdtemp(), ["a", "b"], check_pixels=pixels).top1_agreement
    1.0
    """
    content = convert(model)
    return write_if_faithful(model, ONNXClassifier(content), content, out_dir, FILE, check_pixels, "ONNX",
                             "onnx", THRESHOLD, class_names)
