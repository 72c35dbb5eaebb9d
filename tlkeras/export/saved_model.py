"""SavedModel export that TF Serving serves as it is, checked before it is declared done.

Layout: `<export_dir>/<version>/` with an integer version, the next free one. Signatures:

- `serving_default`: `image_bytes` (tf.string [None], encoded JPEG/PNG/BMP/GIF; the `_bytes`
  suffix makes TF Serving's REST API accept {"b64": ...}) -> `probabilities` [None, C] float32,
  `classes` [None, k] tf.string class names, `scores` [None, k] float32 (top k, best first).
  A multi-label model returns `probabilities`, `labels` [None, C] tf.string (a class's name where
  its probability is at or above its threshold, "" elsewhere) and `label_count` [None] int32: the
  outputs are the model's Task's (`Task.serving_outputs`), its thresholds built into the graph. `error` [None]
  tf.string: why an item was not answered (empty, not an image, a header with no pixels or above max_image_pixels;
  its scores NaN, its names ""), "" for every answered item; an empty batch gets empty outputs.
- `serving_images`: `images` (float32 [None, H, W, 3], RGB pixels in [0, 255], any size) -> same outputs.
- exported with test-time augmentation (`tta`, e.g. "flip"), every signature averages each input's probabilities
  with its views' (`Inputs.tta_views`) inside the graph; the model card says which.
- a text classifier's `serving_default`: `text` (tf.string [None], raw strings) -> the same outputs.

Both run `tlkeras.data.images` — the training pipeline's own decode and resize — and the model
(which carries the backbone's normalisation) inside the graph. `assets/labels.txt` holds the
class names, one per line. The export is written into a temporary folder, re-loaded, checked
against the in-memory model, and only then renamed into place; an existing version is never
touched.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from tlkeras._logging import get_logger
from tlkeras.errors import ExportError
from tlkeras.model import inputs_of, model_info, predict_function, task_of
from tlkeras.atomic import fsync_path, fsync_tree, temp_prefix

from tlkeras.rundir import LABELS_FILE, MODEL_CARD_FILE, export_versions  # noqa: E402  (file names are rundir's)
# Float32 graphs of the same ops on the same device agree to rounding; 1e-5 is far above
# that and far below any real train/serve difference (a resize or scale error moves
# probabilities by 1e-2 or more).
VERIFY_TOLERANCE = 1e-5


class _ServingModule(tf.Module):
    def __init__(self, model, class_names: Sequence[str], labels_path: str, top_k: int, tta: str = "none"):
        super().__init__(name="tlkeras_serving")
        # Track the variables, not the Keras model: saving a Keras model as a child also traces
        # and writes its own functions, which TF Serving never calls (measured: most of the save time).
        self.model_variables = list(model.variables)
        # Layers whose functions use resources beyond variables (a hub module's vocabulary table)
        # say so; the SavedModel must carry them.
        self.hub_modules = [r for layer in model._flatten_layers() for r in _serving_resources(layer)]
        self.labels = tf.saved_model.Asset(labels_path)
        self._class_names = tf.constant(list(class_names))
        self._k = min(top_k, len(class_names))
        info = model_info(model)
        self._task, self._decision = info.task_role, info.decision
        # a closure (not an attribute), so tf.Module does not track the Keras model itself
        self._call_model = lambda inputs: model(inputs, training=False)
        self._views = inputs_of(model).tta_views(tta)
        # The model and its outputs as one function of the model's inputs, traced once and called by every
        # signature (an image model's two signatures would each trace and store the whole network).
        specs = [tf.TensorSpec(t.shape, t.dtype) for t in model.inputs]
        outputs = tf.function(self._outputs, input_signature=[specs[0] if len(specs) == 1 else specs])
        # What clients send -> the model's inputs: the Inputs kind's signatures (the training decode/resize)
        self.endpoints = inputs_of(model).serving_functions(outputs, model)

    def _outputs(self, inputs):
        probabilities = tta_probabilities(self._call_model, inputs, self._task, self._views)
        return self._task.serving_outputs(probabilities, self._class_names, self._decision, self._k)


def tta_probabilities(call, inputs, task, views=()):
    """The Task's probabilities (float32) of `call(inputs)`, averaged with those of `call(view(inputs))` for each of
    `views` (test-time augmentation, `Inputs.tta_views`; none: the inputs' own)."""
    probabilities = tf.cast(task.to_probabilities(call(inputs)), tf.float32)
    for view in views:
        probabilities += tf.cast(task.to_probabilities(call(view(inputs))), tf.float32)
    return probabilities / (1 + len(views))


def next_version(export_dir: str) -> int:
    """1 + the largest integer folder name under `export_dir` (1 when there is none)."""
    return max(export_versions(export_dir), default=0) + 1


def export_saved_model(
    model,
    export_dir: str,
    class_names: Sequence[str],
    *,
    top_k: int = 5,
    verify_images: Optional[Sequence[bytes]] = None,
    card: Optional[dict] = None,
    tta: str = "none",
) -> str:
    """Write a TF Serving SavedModel of `model` to `<export_dir>/<next version>` and return its path.

    Args:
        model: a tlkeras model (pixels in [0, 255] -> probabilities).
        export_dir: the model's base folder (what TF Serving's --model_base_path points at).
        class_names: names of the classes, in label order.
        top_k: how many classes `classes` / `scores` list per image.
        verify_images: encoded images (texts, for a text classifier) to check the export with
            (e.g. validation images); synthetic ones are used when None.
        card: what is known of the model's making (backbone, weights, config digest, metrics...),
            written with the image size, preprocessing, class names and library versions to
            assets/model_card.json (see `model_card`).
        tta: test-time augmentation inside the graph ("flip", "flip_all": `Inputs.tta_views`): each signature
            averages an input's probabilities with its views'; the check compares with the model's own average.

    Raises:
        ExportError: the re-loaded SavedModel does not answer as `model` does; nothing is left behind.

    Example:

    >>> import tempfile, tlkeras
    >>> model = tlkeras.build_model("mobilenetv2", 3, image_size=32, weights=None,
    ...                             backbone_options={"alpha": 0.35})
    >>> path = export_saved_model(model, tempfile.mkdtemp(), ["a", "b", "c"], top_k=2)
    >>> os.path.basename(path)
    '1'
    """
    class_names = [str(c) for c in class_names]
    n_out = model.output_shape[-1]
    if task_of(model).output_units(len(class_names)) != n_out:
        raise ExportError(
            f"the model predicts {max(n_out, 2)} classes but {len(class_names)} class names were given."
        )
    os.makedirs(export_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=temp_prefix("export"), dir=export_dir)
    try:
        labels_path = os.path.join(staging, LABELS_FILE)
        with open(labels_path, "w", encoding="utf-8") as f:
            f.write("\n".join(class_names) + "\n")
        inputs_of(model).check_tta(tta)
        module = _ServingModule(model, class_names, labels_path, top_k, tta)
        target = os.path.join(staging, "model")
        tf.saved_model.save(module, target, signatures=module.endpoints)
        with open(os.path.join(target, "assets", MODEL_CARD_FILE), "w", encoding="utf-8") as f:
            extra = {**(card or {}), **({"tta": tta} if tta != "none" else {})}
            json.dump(model_card(model, class_names, top_k, extra), f, indent=2, default=str)
        images = list(verify_images) if verify_images else inputs_of(model).synthetic_samples(model)
        verify_export(target, model, images, tta=tta)
        fsync_tree(target)  # on disk before it is published: a power loss leaves no empty version
        while True:
            version = next_version(export_dir)
            final = os.path.join(export_dir, str(version))
            try:
                os.rename(target, final)  # atomic; fails if another export took this version
                fsync_path(export_dir)
                break
            except OSError:
                if not os.path.exists(final):
                    raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    get_logger().info("exported SavedModel version %d to %s (checked on %d %s)%s", version, final, len(images),
                      inputs_of(model).noun, f"; it averages each input with its {tta} views" if tta != "none" else "")
    return final


def model_card(model, class_names: Sequence[str], top_k: int, extra: Optional[dict] = None) -> dict:
    """assets/model_card.json: what the model is, what it expects, and what made it."""
    from tlkeras.runrecord import library_versions

    info = model_info(model)
    outputs = info.task_role.output_description(list(class_names), info.decision, top_k)
    common = {"class_names": list(class_names), "task_name": info.task, "decision": info.decision,
              "versions": library_versions(), **(extra or {})}
    card = {"format": "tlkeras model card 1", **inputs_of(model).card(model)}
    card["task"] = info.task_role.card_task(card["task"])  # e.g. "multi-label image classification"
    card["outputs"] = outputs
    if info.task_options:  # a regression's target mean and deviation: what the values are scaled by
        common["task_options"] = info.task_options
    return {**card, **common}


def _serving_resources(layer) -> list:
    resources = getattr(layer, "serving_resources", None)
    return list(resources()) if callable(resources) else []


def verify_export(path: str, model, images: Sequence, tolerance: float = VERIFY_TOLERANCE, tta: str = "none") -> float:
    """Re-load the SavedModel at `path`, run `serving_default` on `images` (what clients send: encoded
    images, or texts for a text classifier) and compare with `model` (averaged over the `tta` views).

    Returns the largest absolute probability difference; raises ExportError above `tolerance`.
    """
    loaded = tf.saved_model.load(path)
    serve = loaded.signatures["serving_default"]
    kind = inputs_of(model)
    request = kind.request(images)  # {input name: values}, as a client sends them
    inputs = kind.model_batch(images, model)
    served = serve(**{name: tf.constant(values) for name, values in request.items()})
    expected = np.asarray(tta_probabilities(predict_function(model), inputs, model_info(model).task_role,
                                            kind.tta_views(tta)))
    key = model_info(model).task_role.output_key
    diff = float(np.max(np.abs(served[key].numpy() - expected)))
    if not diff <= tolerance:
        raise ExportError(
            f"the exported SavedModel does not answer as the trained model: its {key} differ by {diff:.2e} "
            f"(tolerance {tolerance:.0e}); the export was not written."
        )
    # What TF Serving's clients would read: a REST body, and a gRPC PredictRequest when its library is here.
    from tlkeras.export import serving_client

    clients = ["rest"]
    body = serving_client.rest_body(request)
    rest = serving_client.rest_predict(path, body, serve)["predictions"]
    serving_client.compare("rest", np.asarray([row[key] for row in rest]), expected, tolerance)
    if serving_client.have_client_library():
        _, response = serving_client.grpc_predict(path, request, serve=serve)
        serving_client.compare("grpc", tf.make_ndarray(response.outputs[key]), expected, tolerance)
        clients.append("grpc")
    else:
        get_logger().info("gRPC client check skipped: pip install tensorflow-serving-api (extra 'serving') to run it")
    get_logger().debug("export answered the %s clients within %g", " and ".join(clients), tolerance)
    return diff
