"""Issue 6 (part): the export answers TF Serving's clients - a gRPC PredictRequest built with
tensorflow-serving-api and a REST body - as the trained model does; the model card."""

import base64
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tlkeras.errors import ExportError
from tlkeras.export import serving_client
from tlkeras.export.saved_model import MODEL_CARD_FILE
from tlkeras.model import predict_function, to_probabilities
from tlkeras.data.images import decode_and_resize

from conftest import COLORS, make_image


def _blobs(n=3):
    rng = np.random.default_rng(3)
    return [tf.io.encode_png(make_image(rng, c)).numpy() for c in list(COLORS.values())[:n]]


def _expected(model, blobs):
    from tlkeras.model import image_size_of

    pixels = tf.stack([decode_and_resize(tf.constant(b), image_size_of(model)) for b in blobs])
    return np.asarray(to_probabilities(predict_function(model)(pixels)))


def test_a_grpc_predict_request_built_with_the_serving_api_gets_the_models_answer(trained_run):
    pytest.importorskip("tensorflow_serving.apis.predict_pb2")
    blobs = _blobs()
    request, response = serving_client.grpc_predict(trained_run.export_dir, blobs, model_name="colors")
    assert request.model_spec.signature_name == "serving_default"
    assert request.inputs["image_bytes"].dtype == tf.string.as_datatype_enum
    assert [d.size for d in request.inputs["image_bytes"].tensor_shape.dim] == [3]
    probabilities = tf.make_ndarray(response.outputs["probabilities"])
    np.testing.assert_allclose(probabilities, _expected(trained_run.model, blobs), atol=1e-5)
    classes = [c.decode() for c in tf.make_ndarray(response.outputs["classes"])[:, 0]]
    assert classes == [trained_run.class_names[i] for i in probabilities.argmax(axis=1)]


def test_the_signature_def_is_what_tf_serving_resolves_requests_against(trained_run):
    sig = serving_client.signature_def(trained_run.export_dir)
    assert list(sig.inputs) == ["image_bytes"]
    assert sig.inputs["image_bytes"].dtype == tf.string.as_datatype_enum
    assert [d.size for d in sig.inputs["image_bytes"].tensor_shape.dim] == [-1]
    assert set(sig.outputs) == {"probabilities", "classes", "scores", "error"}


def test_a_request_with_the_wrong_dtype_or_name_is_refused_as_tf_serving_would(trained_run):
    sig = serving_client.signature_def(trained_run.export_dir)
    with pytest.raises(ExportError, match="dtype"):
        serving_client._check_input(sig, "image_bytes", tf.make_tensor_proto(np.zeros(2, np.float32)))
    with pytest.raises(ExportError, match="'images' is not in the signature"):
        serving_client._check_input(sig, "images", tf.make_tensor_proto([b"x"]))


def test_the_rest_body_with_b64_images_gets_the_models_answer_in_row_format(trained_run):
    blobs = _blobs()
    body = serving_client.rest_body(blobs)
    assert json.loads(body)["instances"][0]["image_bytes"]["b64"] == base64.b64encode(blobs[0]).decode()
    answer = serving_client.rest_predict(trained_run.export_dir, body)
    rows = answer["predictions"]
    assert len(rows) == 3 and set(rows[0]) == {"probabilities", "classes", "scores", "error"}
    assert [r["error"] for r in rows] == ["", "", ""]
    np.testing.assert_allclose([r["probabilities"] for r in rows], _expected(trained_run.model, blobs), atol=1e-5)
    assert all(isinstance(c, str) for c in rows[0]["classes"])


def test_a_rest_body_without_instances_is_refused(trained_run):
    with pytest.raises(ExportError, match="no 'instances'"):
        serving_client.rest_predict(trained_run.export_dir, json.dumps({"inputs": []}))


def test_a_client_reading_other_probabilities_fails_the_check():
    with pytest.raises(ExportError, match="grpc client would read probabilities 1.00e-02 away"):
        serving_client.compare("grpc", np.array([[0.51, 0.49]]), np.array([[0.5, 0.5]]), 1e-5)


def test_the_export_carries_a_model_card(trained_run):
    with open(os.path.join(trained_run.export_dir, "assets", MODEL_CARD_FILE)) as f:
        card = json.load(f)
    assert card["class_names"] == trained_run.class_names
    assert card["image_size"] == [32, 32]
    assert card["backbone"]["name"] == "mobilenetv2" and len(card["backbone"]["sha256"]) == 64
    assert len(card["config_sha256"]) == 64
    assert card["validation_metrics"]["accuracy"] == trained_run.metrics["accuracy"]
    assert card["versions"]["tensorflow"] == tf.__version__
    assert "tf" in card["preprocessing"]  # MobileNetV2 scales to [-1, 1]
