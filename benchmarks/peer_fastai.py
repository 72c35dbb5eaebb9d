"""The peer a user would pick instead: fastai's `vision_learner(...).fine_tune(...)` with `aug_transforms`, on the
few-labels tasks of few_labels.py - the same pools, the same N per class drawn by the same seed, the same
validation rows tlkeras splits off, the same held-out test sets - from a MobileNetV2 that fastai pretrains itself on
digits 0-4 with tlkeras's source recipe (30 epochs at a constant 2e-3, Adam, batch 32, rotation / zoom / shift).

A benchmark-only dependency, in its own environment (never one of tlkeras's):

    python3 -m venv /tmp/fastai-venv
    /tmp/fastai-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 fastai==2.8.12 scikit-image
    PYTHONPATH=. /tmp/fastai-venv/bin/python benchmarks/peer_fastai.py --tasks digits:20,textures:20,faces:20 \\
        --seeds 0,1,2

Each run trains as many epochs as tlkeras's defaults do on the same data (`epochs: auto`: stage 1's epochs frozen,
stage 2's unfrozen; `fine_tune(epochs, freeze_epochs=...)` at fastai's default base rate 2e-3 with its discriminative
rates and one-cycle schedule), so that the two differ in recipe, not in budget. Results go to
benchmarks/.cache/few_labels/peer_fastai.jsonl, keyed by task, N, seed and this file's recipe; tlkeras's side is
few_labels.py's `run` with `defaults` (same tasks and seeds). Only numpy, torch, torchvision, fastai and
scikit-image are imported here (tlkeras's data files are read from its folder, tlkeras.tasks' split is pure NumPy).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import few_labels  # noqa: E402  (its tasks: numpy and scikit-image only)

RESULTS = os.path.join(few_labels.CACHE, "peer_fastai.jsonl")
SOURCE = os.path.join(few_labels.CACHE, f"source-fastai-mobilenetv2-{few_labels.IMAGE_SIZE}.pt")
RECIPE = "fine_tune(stage2 epochs, freeze_epochs=stage1 epochs), base_lr 2e-3, aug_transforms, bs 32"
STATS = ([0.5] * 3, [0.5] * 3)  # [0, 1] -> [-1, 1], MobileNetV2's own input range (as Keras's preprocess_input)


def dataloaders(x, y, valid_rows, augment, seed: int, batch_size: int = 32):
    """fastai DataLoaders of arrays `x` (grey or RGB uint8) and labels `y`, `valid_rows` the validation rows."""
    from fastai.vision.all import (CategoryBlock, DataBlock, ImageBlock, IndexSplitter, Normalize, PILImage,
                                   Resize, ResizeMethod, aug_transforms, set_seed)

    set_seed(seed, reproducible=True)
    size = few_labels.IMAGE_SIZE
    block = DataBlock(
        blocks=(ImageBlock(PILImage), CategoryBlock),
        # an item is a row of `x`, or an image itself (the test set's, through `test_dl`)
        get_x=lambda item: PILImage.create(np.asarray(x[item] if isinstance(item, (int, np.integer)) else item)),
        get_y=lambda i: int(y[i]),
        splitter=IndexSplitter(list(valid_rows)),
        item_tfms=Resize(size, method=ResizeMethod.Squish),
        batch_tfms=[*augment, Normalize.from_stats(*STATS)],
    )
    return block.dataloaders(list(range(len(y))), bs=batch_size, num_workers=0)


def source_arch():
    """A MobileNetV2 (torchvision) pretrained by fastai on digits 0-4, cached; `arch(pretrained=...)` for
    vision_learner."""
    import torch
    import torchvision

    if not os.path.isfile(SOURCE):
        from fastai.vision.all import Learner, accuracy, aug_transforms

        data = np.load(os.path.join(HERE, "..", "tlkeras", "resources", "digits.npz"))
        images, labels = data["images"], data["labels"].astype(np.int64)
        keep = labels < 5
        x, y = images[keep], labels[keep]
        valid = np.random.default_rng(0).permutation(len(y))[: len(y) // 5]
        augment = aug_transforms(do_flip=False, max_rotate=36.0, max_zoom=1.1, max_lighting=0.0, max_warp=0.0,
                                 p_affine=1.0)  # tlkeras's: rotation 0.1 of a turn, zoom 0.1, translation
        dls = dataloaders(x, y, valid, augment, seed=0)
        learn = Learner(dls, torchvision.models.mobilenet_v2(num_classes=5), metrics=accuracy)
        with learn.no_bar(), learn.no_logging():
            learn.fit(few_labels.SOURCE_EPOCHS, 2e-3)  # constant rate, as tlkeras's source recipe
        print(f"source model (digits 0-4): validation accuracy {float(learn.validate()[1]):.3f}", flush=True)
        os.makedirs(os.path.dirname(SOURCE), exist_ok=True)
        torch.save(learn.model.state_dict(), SOURCE)

    def arch(pretrained=True):
        model = torchvision.models.mobilenet_v2(num_classes=5)
        if pretrained:
            model.load_state_dict(torch.load(SOURCE))
        return model

    from fastai.vision.all import default_split, model_meta

    # fastai's own entry for a torchvision MobileNetV2: the body is `features` (its classifier cut off), two groups
    model_meta[arch] = {"cut": -1, "split": default_split, "stats": None}
    return arch


def tlkeras_epochs(train_count: int, batch_size: int = 32) -> tuple[int, int]:
    """The epochs tlkeras's `epochs: auto` gives stage 1 and stage 2 on `train_count` examples (at least 5 and at
    least 200 / 300 optimizer steps, at most 100: tlkeras.training.budget)."""
    steps = -(-train_count // batch_size)
    return tuple(min(100, max(5, -(-need // steps))) for need in (200, 300))


def run_one(task_name: str, per_class: int, seed: int, flip: bool = True) -> dict:
    from fastai.vision.all import aug_transforms, set_seed, vision_learner, accuracy

    from tlkeras.tasks.single_label import SingleLabel

    start = time.perf_counter()
    task = few_labels.get_task(task_name)
    x, y, _ = task.draw(per_class, seed)
    train_rows, valid_rows = SingleLabel().split(y, 0.2, seed)  # the rows tlkeras validates on
    frozen, unfrozen = tlkeras_epochs(len(train_rows))
    dls = dataloaders(x, y, valid_rows, aug_transforms(do_flip=flip), seed)
    set_seed(seed, reproducible=True)
    learn = vision_learner(dls, source_arch(), normalize=False, metrics=accuracy)
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(unfrozen, base_lr=2e-3, freeze_epochs=frozen)
    probabilities, _ = learn.get_preds(dl=learn.dls.test_dl([np.asarray(image) for image in task.test_x]))
    return {"test_accuracy": float((probabilities.numpy().argmax(1) == task.test_y).mean()),
            "val_accuracy": float(learn.validate()[1]), "seconds": time.perf_counter() - start,
            "epochs": [frozen, unfrozen], "train_count": int(len(train_rows))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="digits:20")
    p.add_argument("--seeds", default="0", type=lambda s: [int(v) for v in s.split(",")])
    p.add_argument("--no-flip", action="store_true", help="aug_transforms(do_flip=False): for data with a left and "
                                                          "right (digits), where a mirror is another class's picture")
    args = p.parse_args(argv)
    import torch

    done = {}
    if os.path.isfile(RESULTS):
        with open(RESULTS, encoding="utf-8") as f:
            done = {row["key"]: row for row in map(json.loads, f) if row}
    for name, n in few_labels.parse_tasks(args.tasks):
        accuracies, seconds = [], []
        for seed in args.seeds:
            recipe = RECIPE + (", do_flip=False" if args.no_flip else "")
            key = json.dumps([name, n, seed, RECIPE, torch.__version__] if not args.no_flip else
                             [name, n, seed, recipe, torch.__version__])
            if key not in done:
                row = {"key": key, "task": f"{name}:{n}", "seed": seed, "when": time.strftime("%Y-%m-%d %H:%M"),
                       "recipe": recipe, **run_one(name, n, seed, flip=not args.no_flip)}
                with open(RESULTS, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
                done[key] = row
                print(f"  {name}:{n} seed {seed} fastai: test {row['test_accuracy']:.4f} (val {row['val_accuracy']:.3f})"
                      f" {row['seconds']:.0f} s, epochs {row['epochs']}", flush=True)
            accuracies.append(done[key]["test_accuracy"])
            seconds.append(done[key]["seconds"])
        print(f"| {name}:{n} | fastai{' (no flip)' if args.no_flip else ''} | {' / '.join(f'{a:.3f}' for a in accuracies)} | {np.mean(accuracies):.4f} | "
              f"{np.mean(seconds):.0f} |", flush=True)


if __name__ == "__main__":
    main()
