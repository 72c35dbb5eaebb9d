"""Does the input pipeline keep ahead of the model? Rates of each, in images per second.

Measures, on the benchmark's digits folder (see recipe_vs_tlkeras.py, which writes it):
- keras.utils.image_dataset_from_directory, as the keras.io recipe uses it (decodes every epoch);
- the tlkeras pipeline streaming from files (cache_images=false): list, shuffle names, parallel
  decode + resize with the one decode function, batch, prefetch;
- the tlkeras pipeline on decoded pixels kept in memory (cache_images=auto, the default);
- what the model consumes: training steps of the full model with the top 30 % unfrozen.

    python benchmarks/pipeline_rate.py --image-size 128
"""

from __future__ import annotations

import argparse
import os
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def rate(ds, epochs: int = 3) -> float:
    """Images per second over `epochs` passes, after one warm-up pass."""
    count = sum(int(x.shape[0]) for x, _ in ds)
    start = time.time()
    for _ in range(epochs):
        for _ in ds:
            pass
    return count * epochs / (time.time() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--backbone", default="mobilenetv2")
    args = p.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    import tlkeras
    from tlkeras.config import FinetuneConfig
    from tlkeras.data import make_datasets

    folder = os.path.join(HERE, ".cache", f"digits-{args.image_size}", "train")
    if not os.path.isdir(folder):
        raise SystemExit(f"{folder} is missing: run benchmarks/recipe_vs_tlkeras.py --image-size {args.image_size} first")
    size = (args.image_size, args.image_size)
    rows = []
    recipe = keras.utils.image_dataset_from_directory(folder, image_size=size, batch_size=args.batch_size,
                                                      seed=0, verbose=False).prefetch(tf.data.AUTOTUNE)
    rows.append(("image_dataset_from_directory (keras.io recipe)", rate(recipe)))
    for label, cache in (("tlkeras, streaming from files", False), ("tlkeras, decoded pixels in memory", "auto")):
        cfg = FinetuneConfig.from_dict({"data": folder, "val_split": 0, "batch_size": args.batch_size,
                                        "cache_images": cache})
        rows.append((label, rate(make_datasets(cfg, size).train)))

    model = tlkeras.build_model(args.backbone, 5, image_size=size, weights=None)
    tlkeras.freezing.freeze_backbone(model)
    tlkeras.freezing.unfreeze(model, 0.3)
    model.compile(keras.optimizers.Adam(1e-5), "sparse_categorical_crossentropy")
    x = np.random.default_rng(0).uniform(0, 255, (args.batch_size * 8, *size, 3)).astype("float32")
    y = np.arange(len(x)) % 5
    model.fit(x[: args.batch_size], y[: args.batch_size], batch_size=args.batch_size, verbose=0)
    start = time.time()
    model.fit(x, y, batch_size=args.batch_size, epochs=2, verbose=0)
    rows.append((f"model consumes ({args.backbone}, top 30 % training)", 2 * len(x) / (time.time() - start)))

    print(f"| {args.image_size} px, batch {args.batch_size} | images/s |")
    print("| --- | --- |")
    for label, value in rows:
        print(f"| {label} | {value:.0f} |")


if __name__ == "__main__":
    main()
