import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import COLORS, make_image
from tlkeras.data.images import decode_and_resize, prepare_image
from tlkeras.errors import ExportError
from tlkeras.export import export_saved_model
from tlkeras.model import to_probabilities


def _png_bytes(n=5, size=(40, 48), seed=7):
    rng = np.random.default_rng(seed)
    colors = list(COLORS.values())
    return [tf.io.encode_png(make_image(rng, colors[i % 3], size)).numpy() for i in range(n)]


@pytest.fixture(scope="module")
def exported(trained_run):
    return trained_run.export_dir, trained_run.model


def test_serving_default_on_png_bytes_matches_model_predict(exported):
    export_dir, model = exported
    blobs = _png_bytes()
    served = tf.saved_model.load(export_dir).signatures["serving_default"](image_bytes=tf.constant(blobs))
    pixels = np.stack([decode_and_resize(tf.constant(b), (32, 32)).numpy() for b in blobs])
    expected = model.predict(pixels, verbose=0)
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=1e-5)
    # the check is not vacuous: the model does not answer the same for every image
    assert np.ptp(expected, axis=0).max() > 1e-3


def test_serving_default_outputs_top_k_class_names_and_scores(exported, trained_run):
    export_dir, _ = exported
    out = tf.saved_model.load(export_dir).signatures["serving_default"](image_bytes=tf.constant(_png_bytes(3)))
    probs, classes, scores = out["probabilities"].numpy(), out["classes"].numpy(), out["scores"].numpy()
    assert probs.shape == (3, 3) and classes.shape == (3, 2) and scores.shape == (3, 2)  # top_k=2 in the run
    names = np.array(trained_run.class_names)
    order = np.argsort(-probs, axis=1)[:, :2]
    assert (classes.astype(str) == names[order]).all()
    np.testing.assert_allclose(scores, np.take_along_axis(probs, order, axis=1), atol=1e-7)


def test_serving_images_takes_float_pixels_of_any_size(exported):
    export_dir, model = exported
    raw = make_image(np.random.default_rng(3), COLORS["green"], (50, 61)).astype("float32")
    out = tf.saved_model.load(export_dir).signatures["serving_images"](images=tf.constant(raw[None]))
    expected = model.predict(prepare_image(raw, (32, 32)).numpy()[None], verbose=0)
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)


def test_signatures_are_what_tf_serving_needs(exported):
    loaded = tf.saved_model.load(exported[0])
    sig = loaded.signatures["serving_default"]
    (name, spec), = sig.structured_input_signature[1].items()
    assert name == "image_bytes" and spec.dtype == tf.string and spec.shape.as_list() == [None]
    outputs = sig.structured_outputs
    assert outputs["probabilities"].dtype == tf.float32 and outputs["classes"].dtype == tf.string
    assert set(loaded.signatures) == {"serving_default", "serving_images"}


def test_labels_ship_in_the_saved_model_assets(exported, trained_run):
    labels = os.path.join(exported[0], "assets", "labels.txt")
    with open(labels) as f:
        assert f.read().split("\n")[:-1] == trained_run.class_names


def test_versions_count_up_and_never_overwrite(tiny_model, tmp_path):
    base = str(tmp_path / "export")
    first = export_saved_model(tiny_model, base, ["r", "g", "b"])
    stamp = os.path.getmtime(os.path.join(first, "saved_model.pb"))
    second = export_saved_model(tiny_model, base, ["r", "g", "b"])
    assert [os.path.basename(first), os.path.basename(second)] == ["1", "2"]
    assert os.path.getmtime(os.path.join(first, "saved_model.pb")) == stamp
    assert sorted(os.listdir(base)) == ["1", "2"]  # no temporary folders left


def test_a_failed_check_leaves_no_version_and_no_partial_folder(tiny_model, tmp_path, monkeypatch):
    base = str(tmp_path / "export")
    export_saved_model(tiny_model, base, ["r", "g", "b"])

    import tlkeras.export.saved_model as sm

    original = sm.verify_export
    monkeypatch.setattr(sm, "verify_export",
                        lambda path, model, images, **kw: original(path, model, images, tolerance=-1.0))
    with pytest.raises(ExportError, match=r"does not answer as the trained model.*the export was not written"):
        export_saved_model(tiny_model, base, ["r", "g", "b"])
    assert sorted(os.listdir(base)) == ["1"]


def test_the_check_catches_a_serving_graph_that_differs(tiny_model, tmp_path, monkeypatch):
    """Break the serving preprocessing on purpose: the export must refuse to land."""
    import tlkeras.export.saved_model as sm

    outputs = sm._ServingModule._outputs
    monkeypatch.setattr(sm._ServingModule, "_outputs", lambda self, images: outputs(self, images / 255.0))
    with pytest.raises(ExportError, match="probabilities differ by"):
        export_saved_model(tiny_model, str(tmp_path / "export"), ["r", "g", "b"])
    assert os.listdir(tmp_path / "export") == []


def test_wrong_number_of_class_names_is_refused(tiny_model, tmp_path):
    with pytest.raises(ExportError, match=r"predicts 3 classes but 2 class names"):
        export_saved_model(tiny_model, str(tmp_path), ["a", "b"])


def test_binary_model_exports_two_column_probabilities(backbone_weights, tmp_path):
    import tlkeras
    from conftest import TINY

    model = tlkeras.build_model("mobilenetv2", 2, image_size=32, weights=backbone_weights,
                                backbone_options=TINY["backbone_options"])
    path = export_saved_model(model, str(tmp_path), ["no", "yes"])
    blobs = _png_bytes(3)
    out = tf.saved_model.load(path).signatures["serving_default"](image_bytes=tf.constant(blobs))
    pixels = np.stack([decode_and_resize(tf.constant(b), (32, 32)).numpy() for b in blobs])
    expected = np.asarray(to_probabilities(model(pixels)))
    assert out["probabilities"].shape == (3, 2)
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(out["probabilities"].numpy().sum(axis=1), 1.0, atol=1e-6)
