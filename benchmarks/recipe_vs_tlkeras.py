"""The plain keras.io transfer-learning recipe against tlkeras, same task, same run.

Task: scikit-learn's digits shipped with tlkeras, upscaled to --image-size and written as PNG files.
Source domain digits 0-4 (a backbone is pretrained on them once and cached: these are the "pretrained
weights" both sides start from); target domain digits 5-9 (896 images: 80 % train / 20 % validation
folders, identical for both sides).

(a) recipe: what the keras.io transfer-learning guide writes - image_dataset_from_directory with
    prefetch, the backbone called with training=False inside the model, the head trained with Adam
    1e-3, then the top of the backbone unfrozen (BatchNormalization layers frozen, which Keras 3
    needs on top of training=False), recompiled at 1e-5 and fitted again.
(b) tlkeras.build_and_finetune with the same backbone, weights, folders, image size, batch size,
    epochs, seed and the same unfrozen layers.

Each side runs in its own process (so peak memory is its own). Prints a table and, with --write,
appends it to benchmarks/RESULTS.md with the machine, the command and the date.

    python benchmarks/recipe_vs_tlkeras.py --backbone mobilenetv2 --image-size 96 --write
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import platform
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, ".cache")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="mobilenetv2")
    p.add_argument("--backbone-options", default="{}", help="JSON, e.g. '{\"alpha\": 0.35}'")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--stage1-epochs", type=int, default=10)
    p.add_argument("--stage2-epochs", type=int, default=5)
    p.add_argument("--unfreeze", default="0.3", help="tlkeras stage2.unfreeze; the recipe unfreezes the same layers")
    p.add_argument("--source-epochs", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sides", default="recipe,tlkeras")
    p.add_argument("--repeats", type=int, default=1, help="runs per side and seed; times are medians")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; accuracy is the mean and spread over them")
    p.add_argument("--task", default="full", choices=["full", "fewshot"],
                   help="full: 722 training images; fewshot: 20 per class (both: the same 174 validation images)")
    p.add_argument("--tlkeras-mode", default="matched", choices=["matched", "defaults"],
                   help="matched: tlkeras uses the recipe's rates and unfrozen layers (a speed comparison); "
                        "defaults: tlkeras's own defaults for everything but the epochs (an accuracy comparison)")
    p.add_argument("--tlkeras-options", default="{}", help="JSON of extra build_and_finetune options")
    p.add_argument("--write", action="store_true", help="append the table to benchmarks/RESULTS.md")
    p.add_argument("--run", help=argparse.SUPPRESS)  # internal: run one side and print JSON
    return p.parse_args(argv)


def unfreeze_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


# === Task ===


def prepare_task(args) -> dict:
    """Write the target folders and pretrain the source backbone (both cached)."""
    from tlkeras.demo import load_digits

    size = args.image_size
    options = hashlib.sha1(args.backbone_options.encode()).hexdigest()[:8]
    tag = f"{args.backbone}-{size}-{options}-s{args.seed}"
    train, val = target_folders(size, getattr(args, "task", "full"))
    images, labels = load_digits()
    weights = os.path.join(CACHE, f"source-{tag}.weights.h5")
    if not os.path.isfile(weights):
        import tlkeras

        source = labels < 5
        result = tlkeras.build_and_finetune(
            (images[source], labels[source]), backbone=args.backbone, weights=None, image_size=size,
            backbone_options=json.loads(args.backbone_options), batch_size=32, seed=args.seed,
            stage1={"epochs": 0},
            stage2={"epochs": args.source_epochs, "unfreeze": "all", "train_bn": True, "learning_rate": 2e-3},
            augment={"rotation": 0.1, "zoom": 0.1, "translation": 0.1},
            output_dir=os.path.join(CACHE, f"source-{tag}"), export=False, verbose=0,
        )
        result.model.get_layer("backbone").save_weights(weights)
        print(f"pretrained source backbone: val accuracy {result.metrics['accuracy']:.3f}", file=sys.stderr)
    return {"train": train, "val": val, "weights": weights}


def target_folders(size: int, task: str = "full") -> tuple[str, str]:
    """(train, val) folders of digits 5-9 at `size` px, written once (the val split: 20 %, seeded);
    task "fewshot" keeps 20 training images per class."""
    import numpy as np
    import tensorflow as tf

    from tlkeras.data import prepare_image
    from tlkeras.demo import load_digits

    root = os.path.join(CACHE, f"digits-{size}")
    if not os.path.isdir(os.path.join(root, "train")):
        images, labels = load_digits()
        rng = np.random.default_rng(0)
        for row in np.flatnonzero(labels >= 5):
            split = "val" if rng.random() < 0.2 else "train"
            folder = os.path.join(root, split, str(labels[row]))
            os.makedirs(folder, exist_ok=True)
            big = prepare_image(images[row][..., None], (size, size)).numpy().round().astype("uint8")
            tf.io.write_file(os.path.join(folder, f"{row:04d}.png"), tf.io.encode_png(big))
    train = os.path.join(root, "train")
    if task == "fewshot":
        train = fewshot_folder(train)
    return train, os.path.join(root, "val")


def fewshot_folder(train: str, per_class: int = 20) -> str:
    """The first `per_class` training images of each class, as links in a sibling folder."""
    root = train + f"-fewshot{per_class}"
    if not os.path.isdir(root):
        for name in sorted(os.listdir(train)):
            os.makedirs(os.path.join(root, name), exist_ok=True)
            for f in sorted(os.listdir(os.path.join(train, name)))[:per_class]:
                os.symlink(os.path.join(train, name, f), os.path.join(root, name, f))
    return root


def count_images(folder: str) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


# === Side (a): the keras.io recipe ===


def run_recipe(args, task) -> dict:
    import keras
    import tensorflow as tf

    import tlkeras
    from tlkeras import freezing

    keras.utils.set_random_seed(args.seed)
    size = (args.image_size, args.image_size)
    t0 = time.time()
    train_ds = keras.utils.image_dataset_from_directory(
        task["train"], image_size=size, batch_size=args.batch_size, seed=args.seed, verbose=False
    )
    val_ds = keras.utils.image_dataset_from_directory(
        task["val"], image_size=size, batch_size=args.batch_size, shuffle=False, verbose=False
    )
    num_classes = len(train_ds.class_names)
    train_ds = train_ds.prefetch(tf.data.AUTOTUNE)
    val_ds = val_ds.prefetch(tf.data.AUTOTUNE)

    spec = tlkeras.backbones.resolve(args.backbone, json.loads(args.backbone_options))
    base = spec.build(size, task["weights"])
    base.trainable = False
    inputs = keras.Input(size + (3,))
    x = tlkeras.layers.ImagePreprocessing(spec.preprocessing)(inputs)  # = the family's preprocess_input
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(num_classes)(x)
    model = keras.Model(inputs, outputs)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"])
    setup = time.time() - t0

    t1 = time.time()
    model.fit(train_ds, epochs=args.stage1_epochs, validation_data=val_ds, verbose=0)
    stage1 = time.time() - t1

    # The same layers tlkeras unfreezes, found with tlkeras's own rule on a twin model.
    twin = tlkeras.build_model(args.backbone, num_classes, image_size=size, weights=None,
                               backbone_options=json.loads(args.backbone_options))
    plan = freezing.unfreeze(twin, unfreeze_value(args.unfreeze))
    t2 = time.time()
    base.trainable = True
    cut = [layer.name for layer in base.layers].index(plan.cut_layer) if plan.cut_layer else len(base.layers)
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= cut and not isinstance(layer, keras.layers.BatchNormalization)
    model.compile(keras.optimizers.Adam(1e-5), loss=loss, metrics=["accuracy"])
    model.fit(train_ds, epochs=args.stage1_epochs + args.stage2_epochs, initial_epoch=args.stage1_epochs,
              validation_data=val_ds, verbose=0)
    stage2 = time.time() - t2
    val_loss, accuracy = model.evaluate(val_ds, verbose=0)
    return {"setup": setup, "stage1": stage1, "stage2": stage2, "accuracy": float(accuracy), "val_loss": val_loss,
            "trainable_layers": len(plan.layers)}


# === Side (b): tlkeras ===


def run_tlkeras(args, task) -> dict:
    import logging

    import tlkeras

    logging.getLogger("tlkeras").setLevel(logging.WARNING)
    matched1, matched2 = {}, {}
    if args.tlkeras_mode == "matched":
        # the recipe's optimisation, spelled out: tlkeras's own defaults differ (issue 9)
        matched1 = {"learning_rate": 1e-3, "schedule": "constant", "warmup_epochs": 0}
        matched2 = {"learning_rate": 1e-5, "unfreeze": unfreeze_value(args.unfreeze), "layer_decay": None,
                    "schedule": "constant", "warmup_epochs": 0}
    # matched: nothing the recipe does not do either; defaults: what a user gets (report, TensorBoard)
    extras = {"report": False, "tensorboard": False} if args.tlkeras_mode == "matched" else {}
    extras.update(json.loads(args.tlkeras_options))
    matched1.update(extras.pop("stage1", {}))  # e.g. a candidate default's stage settings
    matched2.update(extras.pop("stage2", {}))
    t0 = time.time()
    result = tlkeras.build_and_finetune(
        task["train"], val_data=task["val"], backbone=args.backbone, weights=task["weights"],
        backbone_options=json.loads(args.backbone_options), image_size=args.image_size,
        batch_size=args.batch_size, seed=args.seed,
        stage1={"epochs": args.stage1_epochs, **matched1}, stage2={"epochs": args.stage2_epochs, **matched2},
        output_dir=os.path.join(CACHE, "tlkeras-run"), overwrite=True, export=False, verbose=0, **extras,
    )
    t = result.timings
    return {
        "setup": t["data"] + t["build"],
        "stage1": t.get("stage1", 0.0),
        "stage2": t.get("stage2", 0.0),
        "stage1_cache_pass": t.get("cache"),  # part of stage 1: the one frozen forward pass
        "total": time.time() - t0 - t.get("evaluate", 0.0),
        "accuracy": float(result.metrics["accuracy"]),
        "val_loss": float(result.metrics["loss"]),
    }


# === Driver ===


def peak_rss_mb() -> float:
    """Peak resident memory of this process since it started (VmHWM). ru_maxrss would not do:
    Linux carries it over from the forking parent across exec."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_side(args) -> dict:
    task = prepare_task(args)
    runner = {"recipe": run_recipe, "tlkeras": run_tlkeras}[args.run]
    out = runner(args, task)
    out.setdefault("total", out["setup"] + out["stage1"] + out["stage2"])
    images = count_images(task["train"])
    out["images_per_second_stage1"] = images * args.stage1_epochs / out["stage1"] if out["stage1"] else None
    out["images_per_second_stage2"] = images * args.stage2_epochs / out["stage2"] if out["stage2"] else None
    out["peak_rss_mb"] = peak_rss_mb()
    out["train_images"] = images
    return out


def main(argv=None):
    args = parse_args(argv)
    if args.run:
        print("RESULT " + json.dumps(run_side(args)))
        return
    prepare_task(args)  # once, before either side is timed
    runs: dict[str, list] = {side: [] for side in args.sides.split(",")}
    seeds = [int(x) for x in args.seeds.split(",")]
    # interleaved, so a slow spell of the machine hits both sides
    for seed, _, side in itertools.product(seeds, range(args.repeats), list(runs)):
        cmd = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--seed", str(seed), "--run", side]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"{side} failed")
        runs[side].append(json.loads(lines[-1][len("RESULT "):]))
        print(f"{side}: {runs[side][-1]}", file=sys.stderr)
    results = {side: median_of(values) for side, values in runs.items()}
    table = format_table(args, results, runs)
    print(table)
    if args.write:
        with open(os.path.join(HERE, "RESULTS.md"), "a", encoding="utf-8") as f:
            f.write(table + "\n")


def median_of(runs: list[dict]) -> dict:
    """Medians of the timings and memory; mean and spread (over seeds) of accuracy and loss."""
    import statistics

    out = dict(runs[-1])
    for key, value in runs[-1].items():
        if isinstance(value, (int, float)):
            out[key] = statistics.median(r[key] for r in runs if isinstance(r.get(key), (int, float)))
    for key in ("accuracy", "val_loss"):
        values = [r[key] for r in runs]
        out[key] = statistics.mean(values)
        out[key + "_spread"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return out


def format_table(args, results, runs) -> str:
    cols = list(results)
    rows = [
        ("stage 1 (s)", "stage1", "{:.1f}"),
        ("  of which the cache pass (s)", "stage1_cache_pass", "{:.1f}"),
        ("stage 2 (s)", "stage2", "{:.1f}"),
        ("total (s)", "total", "{:.1f}"),
        ("stage 1 images/s", "images_per_second_stage1", "{:.0f}"),
        ("stage 2 images/s", "images_per_second_stage2", "{:.0f}"),
        ("peak memory (MB)", "peak_rss_mb", "{:.0f}"),
        ("val accuracy", "accuracy", "{:.4f}"),
        ("val loss", "val_loss", "{:.4f}"),
    ]
    what = (f"unfreeze {args.unfreeze}, the recipe's rates on both sides" if args.tlkeras_mode == "matched"
            else "tlkeras with its default settings")
    lines = [
        f"### {args.backbone} {json.loads(args.backbone_options) or ''} at {args.image_size} px, task {args.task}, "
        f"{args.stage1_epochs}+{args.stage2_epochs} epochs, batch {args.batch_size}; {what}",
        "",
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}, TensorFlow {__import__('tensorflow').__version__}; "
        f"{results[cols[0]]['train_images']} training images; seeds {args.seeds}, {args.repeats} run(s) each: "
        "times are medians, accuracy and loss the mean ± spread over seeds",
        "",
        "`python benchmarks/recipe_vs_tlkeras.py " + " ".join(a for a in sys.argv[1:] if a != "--write") + "`",
        "",
        "    per run: " + "; ".join(f"{c}: " + ", ".join(
            f"{r['accuracy']:.4f}/{r['total']:.0f}s" for r in runs[c]) for c in cols),
        "",
        "| | " + " | ".join(cols) + (" | ratio |" if len(cols) == 2 else " |"),
        "| --- |" + " --- |" * (len(cols) + (1 if len(cols) == 2 else 0)),
    ]
    for label, key, fmt in rows:
        values = [results[c].get(key) for c in cols]
        cells = [fmt.format(v) if isinstance(v, (int, float)) else "-" for v in values]
        if key in ("accuracy", "val_loss") and len(args.seeds.split(",")) > 1:
            cells = [f"{cell} ± {results[c][key + '_spread']:.4f}" for cell, c in zip(cells, cols)]
        ratio = ""
        if len(cols) == 2 and all(isinstance(v, (int, float)) and v for v in values):
            a, b = values
            if key == "accuracy":
                ratio = f"{(b - a) * 100:+.1f} points"
            elif key == "val_loss":
                ratio = f"{b - a:+.4f}"
            elif key.startswith("images_per_second"):
                ratio = f"{b / a:.2f}x faster" if b >= a else f"{a / b:.2f}x slower"
            elif key == "peak_rss_mb":
                ratio = f"{b / a:.2f}x"
            else:
                ratio = f"{a / b:.2f}x faster" if a >= b else f"{b / a:.2f}x slower"
        lines.append(f"| {label} | " + " | ".join(cells) + (f" | {ratio} |" if len(cols) == 2 else " |"))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
