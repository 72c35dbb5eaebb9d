"""Ask an export what TF Serving's clients would ask it, the way they would ask it.

- gRPC: a `PredictRequest` built with TF Serving's own client library (`tensorflow-serving-api`),
  its input resolved against the SavedModel's SignatureDef as TF Serving reads it from
  saved_model.pb (name, dtype, shape), then run against the signature and answered with a
  `PredictResponse` of TensorProtos.
- REST: the body `{"instances": [{"image_bytes": {"b64": "..."}}]}` decoded by TF Serving's rules
  (row format; an object {"b64": s} is base64 for a DT_STRING input), run, and answered in row
  format `{"predictions": [{"probabilities": [...], "classes": [...], "scores": [...]}]}`.

Both return what the client would read, for comparison with the trained model. `serve` lets a
caller that has the SavedModel loaded already (the export check) skip loading it again.
"""

from __future__ import annotations

import base64
import json
import os

import numpy as np
import tensorflow as tf

from tlkeras.errors import ExportError

SIGNATURE = "serving_default"


def signature_def(path: str, name: str = SIGNATURE):
    """The SignatureDef `name` of the SavedModel at `path`, parsed from saved_model.pb (TF
    Serving's own source of truth for input and output names, dtypes and shapes)."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    for meta_graph in proto.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags and name in meta_graph.signature_def:
            return meta_graph.signature_def[name]
    raise ExportError(f"{path!r} has no signature {name!r} under the 'serve' tag; TF Serving could not call it.")


def _check_input(sig, key: str, tensor_proto) -> None:
    """What TF Serving checks before it runs a request: the input exists, its dtype matches, and
    its shape fits the signature's (unknown dimensions match anything)."""
    if key not in sig.inputs:
        raise ExportError(f"the request's input {key!r} is not in the signature (inputs: {sorted(sig.inputs)}).")
    info = sig.inputs[key]
    if info.dtype != tensor_proto.dtype:
        raise ExportError(f"input {key!r}: the request sends dtype {tensor_proto.dtype}, the signature "
                          f"expects {info.dtype}.")
    want = [d.size for d in info.tensor_shape.dim]
    got = [d.size for d in tensor_proto.tensor_shape.dim]
    if not info.tensor_shape.unknown_rank and (
        len(want) != len(got) or any(w not in (-1, g) for w, g in zip(want, got))
    ):
        raise ExportError(f"input {key!r}: the request's shape {got} does not fit the signature's {want}.")


def _columns(inputs, input_name: str) -> dict:
    """{input name: values}: `inputs` as it is, or a sequence of values of the one input `input_name`."""
    return {k: list(v) for k, v in inputs.items()} if isinstance(inputs, dict) else {input_name: list(inputs)}


def grpc_predict(path: str, images, model_name: str = "classifier", serve=None,
                 input_name: str = "image_bytes"):
    """Build a PredictRequest for `images` (encoded images, or texts for input_name="text"; or a dict
    {input name: values} of every input, as `Inputs.request` gives) with tensorflow-serving-api, check it
    against the SignatureDef, run it, and return (request, response) as TF Serving would exchange them."""
    try:
        from tensorflow_serving.apis import predict_pb2
    except ImportError as e:  # pragma: no cover - a test extra
        raise ExportError("the gRPC check needs TF Serving's client library: pip install tensorflow-serving-api") from e

    sig = signature_def(path)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = SIGNATURE
    for name, values in _columns(images, input_name).items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(values, dtype=tf.string))
    for key, proto in request.inputs.items():
        _check_input(sig, key, proto)
    # The server side: the request as bytes on the wire, parsed, and every input made a tensor.
    received = predict_pb2.PredictRequest.FromString(request.SerializeToString())
    served = _call(path, {k: tf.make_ndarray(v) for k, v in received.inputs.items()}, serve)
    response = predict_pb2.PredictResponse()
    response.model_spec.CopyFrom(received.model_spec)
    for key in sig.outputs:
        response.outputs[key].CopyFrom(tf.make_tensor_proto(served[key].numpy()))
    return request, predict_pb2.PredictResponse.FromString(response.SerializeToString())


def rest_body(images, input_name: str = "image_bytes") -> str:
    """The REST request body TF Serving documents (row format): binary inputs (names ending in
    "_bytes") as {"b64": ...}, text as JSON strings. `images` is the values of `input_name`, or a dict
    {input name: values} of every input (as `Inputs.request` gives).

    >>> rest_body({"text_a": ["a cat"], "text_b": ["a dog"]})
    '{"instances": [{"text_a": "a cat", "text_b": "a dog"}]}'
    """
    columns = _columns(images, input_name)

    def cell(name, value):
        return {"b64": base64.b64encode(value).decode("ascii")} if name.endswith("_bytes") else str(value)

    count = len(next(iter(columns.values()), []))
    rows = [{name: cell(name, values[i]) for name, values in columns.items()} for i in range(count)]
    return json.dumps({"instances": rows})


def rest_predict(path: str, body: str, serve=None) -> dict:
    """Decode a REST `:predict` body in row format as TF Serving does, run it, answer in row format."""
    sig = signature_def(path)
    request = json.loads(body)
    if "instances" not in request:
        raise ExportError("the REST body has no 'instances' (row format) - TF Serving would answer 400.")
    columns: dict = {key: [] for key in sig.inputs}
    for row in request["instances"]:
        if not isinstance(row, dict) or set(row) != set(sig.inputs):
            raise ExportError(f"each instance must name every input {sorted(sig.inputs)}; got {row!r:.80}.")
        for key, value in row.items():
            if isinstance(value, dict) and set(value) == {"b64"}:
                if sig.inputs[key].dtype != tf.string.as_datatype_enum:
                    raise ExportError(f"input {key!r} got a {{'b64': ...}} value but is not a string input.")
                value = base64.b64decode(value["b64"])
            columns[key].append(value)
    served = _call(path, {k: np.asarray(v, dtype=object if sig.inputs[k].dtype == tf.string.as_datatype_enum
                                             else None) for k, v in columns.items()}, serve)
    n = len(request["instances"])
    rows = [{key: _jsonable(served[key][i].numpy()) for key in sig.outputs} for i in range(n)]
    return {"predictions": rows}


def _jsonable(value):
    if isinstance(value, bytes):  # a string scalar of the row (a per-item output such as `error`)
        return value.decode("utf-8")
    if value.dtype == object:
        return [v.decode("utf-8") for v in value.reshape(-1)] if value.ndim else value.item().decode("utf-8")
    return value.tolist()


def _call(path: str, inputs: dict, serve=None) -> dict:
    """Run the signature (`serve`, when the caller has the SavedModel loaded already)."""
    if serve is None:
        loaded = tf.saved_model.load(path)
        serve = loaded.signatures[SIGNATURE]
    return serve(**{k: tf.constant(v) for k, v in inputs.items()})


def have_client_library() -> bool:
    try:
        import tensorflow_serving.apis.predict_pb2  # noqa: F401
    except ImportError:
        return False
    return True


def compare(client: str, got: np.ndarray, expected: np.ndarray, tolerance: float) -> float:
    """Max |Δp| between what a client read and the trained model; ExportError beyond `tolerance`."""
    diff = float(np.max(np.abs(np.asarray(got, dtype=np.float64) - expected)))
    if not diff <= tolerance:
        raise ExportError(f"a TF Serving {client} client would read probabilities {diff:.2e} away from the "
                          f"trained model's (tolerance {tolerance:.0e}); the export was not written.")
    return diff
