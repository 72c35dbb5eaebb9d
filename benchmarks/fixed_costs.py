"""Fixed costs of a run that do not grow with the data: what building the optimizer costs inside and outside the
train step's trace, what Keras's first fit epoch costs when only the optimizer is built beforehand (the loss and
metrics then make their variables in the trace, and TensorFlow traces the train step twice) or all of the train
state is (`build_train_state`), what Adam's update costs as Keras's two dozen ops per variable or as TensorFlow's fused
kernel (`LayerwiseAdam`'s default) in the first epoch (tracing) and in the next ones, and what a SavedModel export costs when its two image signatures share one traced model
function or trace the model each.

    python benchmarks/fixed_costs.py [--backbone mobilenetv2] [--alpha 0.35] [--image-size 32] [--repeats 3]

Every figure is the median of `--repeats` fresh objects, so no cache of an earlier repeat helps a later one.
"""

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

import tlkeras  # noqa: E402
from tlkeras.export import saved_model  # noqa: E402
from tlkeras.optimizers import LayerwiseAdam  # noqa: E402


def optimizer_build_seconds(variables, in_trace: bool) -> float:
    optimizer = LayerwiseAdam(1e-3)
    start = time.perf_counter()
    if in_trace:  # where Keras's fit builds it when nobody did: while the first train step is traced
        tf.function(lambda: optimizer.build(variables) or tf.constant(0))()
    else:
        optimizer.build(variables)
    return time.perf_counter() - start


def first_epoch_seconds(args, options, all_state: bool) -> float:
    """A fresh model compiled as a stage compiles it, then one fit epoch of 3 batches: tracing, mostly."""
    import keras
    import numpy as np

    from tlkeras.optimizers import SparseCrossentropy
    from tlkeras.training.runner import build_train_state

    keras.utils.clear_session()
    model = tlkeras.build_model(args.backbone, 3, image_size=args.image_size, weights=None, backbone_options=options)
    model.compile(optimizer=LayerwiseAdam(1e-3), loss=SparseCrossentropy(), metrics=["accuracy"])
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 255, (40, args.image_size, args.image_size, 3)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((pixels, rng.integers(0, 3, 40))).batch(16)
    start = time.perf_counter()
    if all_state:
        build_train_state(model, ds.element_spec)
    else:
        model.optimizer.build(model.trainable_variables)
    model.fit(ds, epochs=1, verbose=0, shuffle=False)
    return time.perf_counter() - start


def update_rule_seconds(args, options, fused: bool) -> tuple:
    """(first fit epoch, mean of three more) of a fresh model with all train state built before, on 160 images in
    batches of 16, with Adam's update as TensorFlow's fused kernel or as Keras's own ops."""
    import keras
    import numpy as np

    from tlkeras.optimizers import SparseCrossentropy
    from tlkeras.training.runner import build_train_state

    keras.utils.clear_session()
    model = tlkeras.build_model(args.backbone, 3, image_size=args.image_size, weights=None, backbone_options=options)
    model.compile(optimizer=LayerwiseAdam(1e-3), loss=SparseCrossentropy(), metrics=["accuracy"])
    if not fused:
        model.optimizer._fusable = lambda gradient, variable: False
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 255, (160, args.image_size, args.image_size, 3)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((pixels, rng.integers(0, 3, 160))).batch(16)
    start = time.perf_counter()
    build_train_state(model, ds.element_spec)
    model.fit(ds, epochs=1, verbose=0, shuffle=False)
    first = time.perf_counter() - start
    start = time.perf_counter()
    model.fit(ds, initial_epoch=1, epochs=4, verbose=0, shuffle=False)
    return first, (time.perf_counter() - start) / 3


def export_seconds(model, shared: bool) -> float:
    original = tf.function
    if not shared:  # the model traced inside each signature, as before the shared function
        def function(fn=None, **kwargs):
            if fn is not None and getattr(fn, "__name__", "") == "_outputs":
                return fn  # a plain Python call: each signature traces the model itself
            return original(fn, **kwargs) if fn is not None else original(**kwargs)

        saved_model.tf.function = function
    try:
        start = time.perf_counter()
        path = saved_model.export_saved_model(model, tempfile.mkdtemp(), ["a", "b", "c"], top_k=2)
        seconds = time.perf_counter() - start
    finally:
        saved_model.tf.function = original
    size = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)
    print(f"    export ({'one traced model' if shared else 'model traced per signature'}): {seconds:.2f} s, "
          f"{size / 1e6:.2f} MB")
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="mobilenetv2")
    parser.add_argument("--alpha", type=float, default=0.35)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    options = {"alpha": args.alpha} if args.backbone.startswith("mobilenet") else {}
    model = tlkeras.build_model(args.backbone, 3, image_size=args.image_size, weights=None, backbone_options=options)
    variables = model.trainable_variables
    rows = []
    for in_trace in (True, False):
        runs = [optimizer_build_seconds(variables, in_trace) for _ in range(args.repeats)]
        rows.append((f"Adam build, {len(variables)} variables, {'inside the trace' if in_trace else 'eager'}",
                     statistics.median(runs)))
    for all_state in (False, True):
        rows.append((f"first fit epoch, {'all train state' if all_state else 'only the optimizer'} built before",
                     statistics.median(first_epoch_seconds(args, options, all_state) for _ in range(args.repeats))))
    for fused in (False, True):
        runs = [update_rule_seconds(args, options, fused) for _ in range(args.repeats)]
        rule = "fused kernel" if fused else "Keras's ops"
        rows.append((f"Adam update as {rule}: first fit epoch (10 batches)", statistics.median(r[0] for r in runs)))
        rows.append((f"Adam update as {rule}: each next epoch (10 batches)", statistics.median(r[1] for r in runs)))
    export_seconds(model, True)  # warm-up: the first export in a process also loads TF's saving code
    for shared in (False, True):
        rows.append((f"export, {'one traced model' if shared else 'model traced per signature'}",
                     statistics.median(export_seconds(model, shared) for _ in range(args.repeats))))
    print(f"\n{args.backbone} at {args.image_size} px")
    for name, seconds in rows:
        print(f"{name:<60} {seconds:7.2f} s")


if __name__ == "__main__":
    main()
