"""Regression (task: regression) against a plain Keras recipe for the same task, quality and time side by side.

Task `rotation`: how far a handwritten digit is turned. Digits 5-9 of scikit-learn's digits (shipped with tlkeras),
upscaled to 32 px and rotated by an angle drawn uniformly from [-40, 40] degrees (scipy.ndimage.rotate, bilinear);
the target is the angle. A fixed pool of 60 % of the images and a fixed test set of the rest; a run takes
`--train N` images of the pool (drawn by its seed) and is scored on the whole test set, which no run sees.

Both sides start from the same MobileNetV2, pretrained here on digits 0-4 (few_labels.py's source, cached), and
use the same images and seeds:

- tlkeras: `build_and_finetune((images, angles), task="regression", ...)` with its defaults (stage epochs by the
  data's size, the standardised Huber loss, cached features);
- Keras: the keras.io transfer-learning guide's recipe written for regression - the base called with
  training=False under GlobalAveragePooling2D, dropout 0.2 and Dense(1) on the raw angle, MSE, Adam 1e-3 for 20
  epochs on the frozen base, then every layer at 1e-5 for 10 epochs - with `validation_split` 0.2 as a user would;
- keras-standardised: the same recipe on standardised angles (the training images' mean and deviation), answered
  in degrees: what a user who standardises the targets by hand gets.

    python benchmarks/regression.py --train 200 --seeds 0,1,2 [--sides tlkeras,keras,keras-standardised]

Each line: test R2, MAE in degrees and the whole job's seconds (in-process, the source weights already cached).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from few_labels import IMAGE_SIZE, source_weights  # noqa: E402

MAX_ANGLE = 40.0


def rotation_task():
    """(pool images, pool angles, test images, test angles): float32 [N, 32, 32, 3] in [0, 255]."""
    from scipy import ndimage

    import tensorflow as tf

    from tlkeras.demo import load_digits

    images, labels = load_digits()
    images = images[labels >= 5].astype("float32")
    large = tf.image.resize(images[..., None], (IMAGE_SIZE, IMAGE_SIZE)).numpy()[..., 0]
    rng = np.random.default_rng(2024)
    angles = rng.uniform(-MAX_ANGLE, MAX_ANGLE, len(large)).astype("float32")
    turned = np.stack([ndimage.rotate(img, angle, reshape=False, order=1) for img, angle in zip(large, angles)])
    turned = np.repeat(np.clip(turned, 0, 255)[..., None], 3, axis=-1).astype("float32")
    order = rng.permutation(len(turned))
    pool, test = order[: int(0.6 * len(order))], order[int(0.6 * len(order)):]
    return turned[pool], angles[pool], turned[test], angles[test]


def scores(predicted, truth) -> tuple[float, float]:
    predicted, truth = np.asarray(predicted, np.float64).reshape(-1), np.asarray(truth, np.float64).reshape(-1)
    r2 = 1.0 - ((predicted - truth) ** 2).sum() / ((truth - truth.mean()) ** 2).sum()
    return float(r2), float(np.abs(predicted - truth).mean())


def run_tlkeras(x, y, test_x, test_y, seed: int):
    import tlkeras

    result = tlkeras.build_and_finetune(
        (x, y), task="regression", backbone="mobilenetv2", weights=source_weights(), image_size=IMAGE_SIZE,
        seed=seed, output_dir=os.path.join(os.path.dirname(source_weights()), "regression-run"), overwrite=True,
        export=False, report=False, tensorboard=False, verbose=0)
    return scores(result.model.predict(test_x, verbose=0), test_y)


def run_keras(x, y, test_x, test_y, seed: int, standardise: bool = False):
    import keras

    mean, std = (float(y.mean()), float(y.std())) if standardise else (0.0, 1.0)
    y = (y - mean) / std

    keras.utils.set_random_seed(seed)
    base = keras.applications.MobileNetV2(input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), include_top=False, weights=None)
    base.load_weights(source_weights())
    base.trainable = False
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    features = base(keras.applications.mobilenet_v2.preprocess_input(inputs), training=False)
    outputs = keras.layers.Dense(1)(keras.layers.Dropout(0.2)(keras.layers.GlobalAveragePooling2D()(features)))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse", metrics=["mae"])
    model.fit(x, y, epochs=20, batch_size=32, validation_split=0.2, verbose=0)
    base.trainable = True
    model.compile(optimizer=keras.optimizers.Adam(1e-5), loss="mse", metrics=["mae"])
    model.fit(x, y, epochs=10, batch_size=32, validation_split=0.2, verbose=0)
    return scores(model.predict(test_x, verbose=0) * std + mean, test_y)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=int, default=200, help="labelled images per run (from the pool)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--sides", default="tlkeras,keras,keras-standardised")
    args = p.parse_args(argv)
    logging.getLogger("tlkeras").setLevel(logging.WARNING)
    source_weights()  # cached once, outside the timings
    pool_x, pool_y, test_x, test_y = rotation_task()
    print(f"rotation: {len(pool_x)} pool and {len(test_x)} test images; train {args.train} per run; angles in "
          f"[-{MAX_ANGLE:g}, {MAX_ANGLE:g}] degrees (test std {test_y.std():.1f})", flush=True)
    sides = {"tlkeras": run_tlkeras, "keras": run_keras,
             "keras-standardised": lambda *a: run_keras(*a, standardise=True)}
    table = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        rows = np.random.default_rng(seed).choice(len(pool_x), args.train, replace=False)
        for side in args.sides.split(","):
            start = time.perf_counter()
            r2, mae = sides[side](pool_x[rows], pool_y[rows], test_x, test_y, seed)
            seconds = time.perf_counter() - start
            table.setdefault(side, []).append((r2, mae, seconds))
            print(f"    {side} seed {seed}: R2 {r2:.4f}, MAE {mae:.2f} degrees, {seconds:.0f} s", flush=True)
    print("| side | test R2 | MAE (degrees) | seconds |")
    print("| --- | ---: | ---: | ---: |")
    for side, runs in table.items():
        r2s, maes, secs = zip(*runs)
        print(f"| {side} | {statistics.mean(r2s):.3f} ({', '.join(f'{v:.3f}' for v in r2s)}) | "
              f"{statistics.mean(maes):.2f} | {statistics.median(secs):.0f} |")


if __name__ == "__main__":
    main()
