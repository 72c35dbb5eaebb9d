"""What a TF Hub module costs as a backbone, against the same network as native Keras 3 layers.

A MobileNetV2 (include_top=False, average pooling, random weights with BatchNormalization statistics
set from one batch) is made twice with the same weights: once with tf_keras and saved with
tf.saved_model.save, as TF Hub modules were made, then loaded by tlkeras as `hub:<folder>`; once
as keras.applications.MobileNetV2 in Keras 3. Both get the same head. The script first checks
that the two answer alike (max |diff| of the probabilities), then times, median of `--repeats`:

- predict: one batch through the whole model in inference mode (what stage 1's feature caching
  and evaluation run),
- train step: one optimizer step with the whole backbone trainable, BN frozen (what stage 2 runs).

    python benchmarks/hub_overhead.py [--image-size 128] [--batch-size 32] [--repeats 20]

Needs the hub extra (tensorflow-hub, tf-keras). Offline: no weights are downloaded.
"""

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tlkeras  # noqa: E402
from tlkeras import freezing  # noqa: E402


def tf_keras_module(size: int, folder: str) -> dict:
    """A tf_keras MobileNetV2 saved as a hub-format SavedModel; returns {layer name: its weights}."""
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    model = tf_keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(size, size, 3),
                                              pooling="avg")
    for layer in model.layers:
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            layer.momentum = 0.0
    model(tf.random.uniform((16, size, size, 3), -1, 1), training=True)  # statistics of a batch
    tf.saved_model.save(model, folder)
    return {layer.name: layer.get_weights() for layer in model.layers if layer.weights}


def timed(fn, repeats: int) -> float:
    for _ in range(3):  # warm-up: tracing, first allocations
        fn()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    size, batch = args.image_size, args.batch_size

    folder = os.path.join(tempfile.mkdtemp(), "mobilenetv2_module")
    weights = tf_keras_module(size, folder)
    hub_model = tlkeras.build_model(f"hub:{folder}", 5, image_size=size, backbone_options={"preprocessing": "tf"})
    native = tlkeras.build_model("mobilenetv2", 5, image_size=size, weights=None)
    for name, values in weights.items():  # by layer: tf_keras and Keras 3 order a model's weights differently
        native.get_layer("backbone").get_layer(name).set_weights(values)
    native.get_layer("predictions").set_weights(hub_model.get_layer("predictions").get_weights())

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    y = rng.integers(0, 5, batch)
    diff = float(np.max(np.abs(hub_model.predict(x, verbose=0) - native.predict(x, verbose=0))))
    if not diff < 1e-4:
        raise SystemExit(f"the two models do not compute the same network (max |diff| {diff:.2e}); nothing timed")

    rows = []
    for name, model in (("keras.applications (native Keras 3)", native), ("hub: module (HubModule)", hub_model)):
        predict = tf.function(lambda images, m=model: m(images, training=False))
        predict_s = timed(lambda: predict(x).numpy(), args.repeats)
        freezing.unfreeze(model, "all")
        model.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy", jit_compile=False)
        model.train_on_batch(x, y)
        trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        step_s = timed(lambda m=model: m.train_on_batch(x, y), args.repeats)
        rows.append((name, trainable, predict_s, step_s))

    print(f"MobileNetV2 at {size}x{size}, batch {batch}, median of {args.repeats}; "
          f"same outputs (max |diff| {diff:.1e})")
    print(f"{'backbone':<38} {'trainable':>10} {'predict ms':>11} {'train step ms':>14}")
    for name, trainable, predict_s, step_s in rows:
        print(f"{name:<38} {trainable:>10,} {predict_s * 1e3:>11.1f} {step_s * 1e3:>14.1f}")
    (_, _, p0, s0), (_, _, p1, s1) = rows
    print(f"hub / native: predict {p1 / p0:.2f}x, train step {s1 / s0:.2f}x")


if __name__ == "__main__":
    main()
