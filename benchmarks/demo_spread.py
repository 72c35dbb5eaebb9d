"""How far does `tlkeras demo`'s result move from one pretraining to the next, and does its promise hold?

The demo pretrains a MobileNetV2 on digits 0-4 with random augmentation, which tf.data runs in a
nondeterministic order: each pretraining gives another source model, and the transfer run from it another test
accuracy. This script pretrains one source per seed (the demo's settings, `seed` changed), then runs the demo's
transfer step from each with one or more stage-2 settings and reports the test accuracy on the demo's 746 test
images, with the scratch baseline (deterministic: it does not depend on the source) for the margin.

    python benchmarks/demo_spread.py --sources 0,1,2,3,4,5,6,7 --settings demo,train-bn

Settings: `demo` is what tlkeras/demo.py runs now (TRANSFER); `train-bn` the same with BatchNormalization training
in stage 2 (train_bn true, the demo's setting before 2026-12-05); `train-bn-last` that and restore_best false.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time

import numpy as np


def settings(name: str) -> dict:
    from tlkeras import demo

    stage2 = dict(demo.TRANSFER["stage2"])
    if name == "demo":
        return dict(demo.TRANSFER)
    if name == "train-bn":
        return dict(demo.TRANSFER, stage2=dict(stage2, train_bn=True))
    if name == "train-bn-last":
        return dict(demo.TRANSFER, stage2=dict(stage2, train_bn=True), restore_best=False)
    raise SystemExit(f"unknown setting {name!r}: use demo, train-bn or train-bn-last")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", default="0,1,2,3,4,5,6,7", help="pretraining seeds, comma-separated")
    parser.add_argument("--settings", default="demo,train-bn", help="stage-2 settings, comma-separated")
    parser.add_argument("--workdir", default=None, help="where runs go (default: a temporary folder)")
    args = parser.parse_args()
    names = args.settings.split(",")
    for name in names:
        settings(name)  # an unknown name fails before any training

    from tlkeras import demo
    from tlkeras._logging import get_logger
    from tlkeras.data.datasets import build_pipeline, load_examples
    from tlkeras.evaluate import evaluate_model
    from tlkeras.model import get_backbone
    from tlkeras.workflow import build_and_finetune

    get_logger().setLevel(logging.WARNING)
    workdir = args.workdir or tempfile.mkdtemp(prefix="demo_spread_")
    images, labels = demo.load_digits()
    names_all = np.array([str(d) for d in labels])
    source = labels < 5
    target_images, target_names = images[~source], names_all[~source]
    train_rows, val_rows, test_rows = demo.split_target(labels[~source], 0)
    train = (target_images[train_rows], target_names[train_rows])
    val = (target_images[val_rows], target_names[val_rows])
    common = dict(backbone=demo.BACKBONE, backbone_options=demo.BACKBONE_OPTIONS, image_size=demo.IMAGE_SIZE,
                  verbose=0, overwrite=True, export=False, report=False, tensorboard=False)

    def test_accuracy(result) -> float:
        test, _, _ = load_examples((target_images[test_rows], target_names[test_rows]), "test", result.class_names)
        ds = build_pipeline(test, (demo.IMAGE_SIZE,) * 2, 64, training=False, cache=False, seed=0)
        return float(evaluate_model(result.model, ds, result.class_names)["accuracy"])

    budget = demo.TRANSFER["stage1"]["epochs"] + demo.TRANSFER["stage2"]["epochs"]
    scratch = build_and_finetune(
        train, val_data=val, weights=None, batch_size=demo.TRANSFER["batch_size"], stage1={"epochs": 0},
        stage2=demo._scratch_stage(budget, 2e-3), restore_best=False, seed=0,
        output_dir=os.path.join(workdir, "scratch"), **common)
    scratch_acc = test_accuracy(scratch)
    print(f"scratch (the demo's baseline, {budget} epochs): test accuracy {scratch_acc:.3f}; "
          f"the promise needs transfer > {scratch_acc + demo.MARGIN:.3f}", flush=True)

    rows = []
    for seed in [int(s) for s in args.sources.split(",")]:
        start = time.time()
        pretrained = build_and_finetune(
            (images[source], names_all[source]), weights=None, batch_size=32, val_split=0.2,
            stage1={"epochs": 0}, stage2=demo._scratch_stage(demo.SOURCE_EPOCHS, 2e-3),
            augment={"rotation": 0.1, "zoom": 0.1, "translation": 0.1}, seed=seed,
            output_dir=os.path.join(workdir, f"source{seed}"), **common)
        weights = os.path.join(workdir, f"source{seed}.weights.h5")
        get_backbone(pretrained.model).save_weights(weights)
        row = {"source_seed": seed, "source_accuracy": float(pretrained.metrics["accuracy"]),
               "pretrain_seconds": round(time.time() - start, 1)}
        for name in names:
            result = build_and_finetune(train, val_data=val, weights=weights, seed=0,
                                        output_dir=os.path.join(workdir, f"t{seed}_{name}"),
                                        **settings(name), **common)
            row[name] = test_accuracy(result)
        rows.append(row)
        print(json.dumps(row), flush=True)

    print()
    print("| source seed | source val. acc. | " + " | ".join(f"transfer, {n}" for n in names) + " |")
    print("| ---: | ---: | " + " | ".join("---:" for _ in names) + " |")
    for row in rows:
        print(f"| {row['source_seed']} | {row['source_accuracy']:.3f} | "
              + " | ".join(f"{row[n]:.3f}" for n in names) + " |")
    for name in names:
        values = np.array([row[name] for row in rows])
        kept = int((values > scratch_acc + demo.MARGIN).sum())
        print(f"{name}: test accuracy {values.min():.3f}-{values.max():.3f} (mean {values.mean():.3f}); promise kept "
              f"with {kept} of {len(values)} sources (scratch {scratch_acc:.3f})")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
