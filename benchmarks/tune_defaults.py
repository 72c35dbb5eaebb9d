"""Evidence for tlkeras's defaults: validation accuracy of candidate fine-tuning settings,
averaged over seeds, on the benchmark's transfer tasks (see recipe_vs_tlkeras.py).

Tasks (digits upscaled, source backbone pretrained on digits 0-4, target digits 5-9):
  full     - 722 training images (80 %), 174 validation images
  fewshot  - 20 training images per class, the same 174 validation images

Each candidate is a set of build_and_finetune options on top of the same backbone, weights, data,
image size, batch size, epochs and seed. Prints mean and standard deviation over the seeds.

    python benchmarks/tune_defaults.py --tasks full,fewshot --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from recipe_vs_tlkeras import CACHE, fewshot_folder, parse_args as bench_args, prepare_task  # noqa: E402

# Every candidate starts from the settings tlkeras had before this search (and which the keras.io
# recipe uses), spelled out so that the table stays reproducible whatever the current defaults are.
BASE = {
    "stage1": {"learning_rate": 1e-3, "schedule": "constant", "warmup_epochs": 0},
    "stage2": {"learning_rate": 1e-5, "unfreeze": 0.3, "layer_decay": None, "schedule": "constant",
               "warmup_epochs": 0},
    "label_smoothing": 0.0,
}

CANDIDATES = {
    "recipe rates (1e-3, then 1e-5 on the top 30 %)": {"stage2": {"learning_rate": 1e-5, "unfreeze": 0.3}},
    "stage 2 at 1e-4, top 30 %": {"stage2": {"learning_rate": 1e-4, "unfreeze": 0.3}},
    "stage 2 at 1e-4, all, layer_decay 0.7": {"stage2": {"learning_rate": 1e-4, "unfreeze": "all", "layer_decay": 0.7}},
    "stage 2 at 3e-4 cosine, all, layer_decay 0.7": {
        "stage2": {"learning_rate": 3e-4, "unfreeze": "all", "layer_decay": 0.7, "schedule": "cosine", "warmup_epochs": 1}
    },
    "stage 2 at 1e-3 cosine, all, layer_decay 0.7": {
        "stage2": {"learning_rate": 1e-3, "unfreeze": "all", "layer_decay": 0.7, "schedule": "cosine", "warmup_epochs": 1}
    },
    "stage 2 at 3e-4 cosine, all, layer_decay 0.7, label smoothing 0.1": {
        "stage2": {"learning_rate": 3e-4, "unfreeze": "all", "layer_decay": 0.7, "schedule": "cosine", "warmup_epochs": 1},
        "label_smoothing": 0.1,
    },
    "stage 1 at 3e-3; stage 2 at 1e-3 cosine, all, layer_decay 0.7": {
        "stage1": {"learning_rate": 3e-3},
        "stage2": {"learning_rate": 1e-3, "unfreeze": "all", "layer_decay": 0.7, "schedule": "cosine", "warmup_epochs": 1},
    },
    "stage 1 at 3e-3; stage 2 at 1e-3 cosine, all, layer_decay 0.8": {
        "stage1": {"learning_rate": 3e-3},
        "stage2": {"learning_rate": 1e-3, "unfreeze": "all", "layer_decay": 0.8, "schedule": "cosine", "warmup_epochs": 1},
    },
    # issue 17: how much of the backbone stage 2 must train (a frozen bottom is computed once, cached)
    "stage 1 at 3e-3; stage 2 at 1e-3 cosine, top 8 blocks, layer_decay 0.7": {
        "stage1": {"learning_rate": 3e-3},
        "stage2": {"learning_rate": 1e-3, "unfreeze": "blocks:8", "layer_decay": 0.7, "schedule": "cosine",
                   "warmup_epochs": 1},
    },
    "stage 1 at 3e-3; stage 2 at 1e-3 cosine, top 4 blocks, layer_decay 0.7": {
        "stage1": {"learning_rate": 3e-3},
        "stage2": {"learning_rate": 1e-3, "unfreeze": "blocks:4", "layer_decay": 0.7, "schedule": "cosine",
                   "warmup_epochs": 1},
    },
    "stage 1 at 3e-3; stage 2 at 1e-3 cosine, top half of the layers, layer_decay 0.7": {
        "stage1": {"learning_rate": 3e-3},
        "stage2": {"learning_rate": 1e-3, "unfreeze": 0.5, "layer_decay": 0.7, "schedule": "cosine",
                   "warmup_epochs": 1},
    },
}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="mobilenetv2")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--tasks", default="full,fewshot")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--stage1-epochs", type=int, default=10)
    p.add_argument("--stage2-epochs", type=int, default=5)
    p.add_argument("--candidates", default="", help="comma-separated indices into CANDIDATES (default: all)")
    p.add_argument("--extra", default="", help="JSON of one more candidate to try, named 'extra'")
    args = p.parse_args()

    import tlkeras

    logging.getLogger("tlkeras").setLevel(logging.WARNING)
    task = prepare_task(bench_args(["--backbone", args.backbone, "--image-size", str(args.image_size)]))
    candidates = dict(CANDIDATES)
    if args.candidates:
        names = list(candidates)
        candidates = {names[int(i)]: candidates[names[int(i)]] for i in args.candidates.split(",")}
    if args.extra:
        candidates["extra " + args.extra] = json.loads(args.extra)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"| candidate | " + " | ".join(args.tasks.split(",")) + " |")
    print("| --- |" + " --- |" * len(args.tasks.split(",")))
    for name, options in candidates.items():
        cells = []
        for task_name in args.tasks.split(","):
            train = task["train"] if task_name == "full" else fewshot_folder(task["train"])
            scores = []
            for seed in seeds:
                stage1 = {"epochs": args.stage1_epochs, **BASE["stage1"], **options.get("stage1", {})}
                stage2 = {"epochs": args.stage2_epochs, **BASE["stage2"], **options.get("stage2", {})}
                rest = {"label_smoothing": BASE["label_smoothing"],
                        **{k: v for k, v in options.items() if k not in ("stage1", "stage2")}}
                result = tlkeras.build_and_finetune(
                    train, val_data=task["val"], backbone=args.backbone, weights=task["weights"],
                    image_size=args.image_size, batch_size=32, seed=seed, stage1=stage1, stage2=stage2,
                    output_dir=os.path.join(CACHE, "tune-run"), export=False, report=False, tensorboard=False,
                    verbose=0, **rest,
                )
                scores.append(result.metrics["accuracy"])
            mean = statistics.mean(scores)
            spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
            cells.append(f"{mean:.4f} ± {spread:.4f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
