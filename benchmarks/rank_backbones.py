"""Does the ranking predict fine-tuned accuracy? `tlkeras.ranking.rank_backbones` against fine-tuning
every candidate with tlkeras's defaults, on the same folders, in one run.

Candidates: genuinely different "pretrained" backbones made here offline - keras.applications
networks of three families pretrained on digits 0-4 (scikit-learn's digits shipped with tlkeras,
upscaled) to different quality (epochs, share of the source data), at two input sizes, plus one
random initialisation. Target: digits 5-9 (the folders of benchmarks/recipe_vs_tlkeras.py: 722
training and 174 validation images, or 20 per class with --task fewshot).

For each task: rank all candidates (LogME and the linear probe; seconds), fine-tune each with
the defaults (stage 1 then stage 2, everything at layer-wise rates; validation accuracy, seconds),
then Kendall's tau-b between each score and the fine-tuned accuracies, and whether the recommended
candidate is the best fine-tuned one. Pretrained weights are cached in benchmarks/.cache/rank/.

    python benchmarks/rank_backbones.py --task full,fewshot --write
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, ".cache", "rank")
sys.path.insert(0, HERE)

# name: (backbone, backbone_options, image size, source epochs (None: random init), share of the source data)
CANDIDATES = {
    "mobilenetv2-a0.35-src15": ("mobilenetv2", {"alpha": 0.35}, 32, 15, 1.0),
    "mobilenetv2-a0.35-src2": ("mobilenetv2", {"alpha": 0.35}, 32, 2, 1.0),
    "mobilenetv2-a0.35-src15-10pct": ("mobilenetv2", {"alpha": 0.35}, 32, 15, 0.1),
    "mobilenetv2-a0.35-48px-src15": ("mobilenetv2", {"alpha": 0.35}, 48, 15, 1.0),
    "mobilenet-a0.25-src10": ("mobilenet", {"alpha": 0.25}, 32, 10, 1.0),
    "efficientnetb0-src6": ("efficientnetb0", {}, 32, 6, 1.0),
    "mobilenetv2-a0.35-random": ("mobilenetv2", {"alpha": 0.35}, 32, None, 1.0),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="full,fewshot",
                   help="comma-separated: full, fewshot, or xN (the full training images and N-1 jittered copies "
                        "of each, e.g. x5: 3610 images; the same validation images)")
    p.add_argument("--candidates", default=",".join(CANDIDATES), help="comma-separated names of CANDIDATES")
    p.add_argument("--seed", type=int, default=0, help="seed of the pretraining and the ranking")
    p.add_argument("--finetune-seeds", default="0,1",
                   help="fine-tuning seeds: a candidate's fine-tuned accuracy is the mean over them (less noise)")
    p.add_argument("--image-size", type=int, default=32,
                   help="target size of the 32-px candidates (the 48-px one gets 1.5x); pretraining stays at 32/48 px")
    p.add_argument("--rank-sample", type=int, default=None,
                   help="rank on this many training images (rank_backbones(sample=N)); fine-tuning uses all")
    p.add_argument("--rank-only", action="store_true",
                   help="rank again, and take the fine-tuned accuracies and times from the last full run of the same "
                        "task, size and seed (benchmarks/.cache/rank/result-*.json)")
    p.add_argument("--write", action="store_true", help="append the tables to benchmarks/RESULTS.md")
    return p.parse_args(argv)


def pretrain(name: str, seed: int, image_size: int = 32) -> dict:
    """The candidate as rank_backbones takes it, its source backbone pretrained (and cached) first."""
    import numpy as np

    import tlkeras
    from tlkeras.demo import load_digits

    backbone, options, size, epochs, share = CANDIDATES[name]
    candidate = {"name": name, "backbone": backbone, "backbone_options": options,
                 "image_size": int(round(size * image_size / 32))}
    if epochs is None:
        return {**candidate, "weights": None}
    path = os.path.join(CACHE, f"{name}-s{seed}.weights.h5")
    if not os.path.isfile(path):
        os.makedirs(CACHE, exist_ok=True)
        images, labels = load_digits()
        rows = np.flatnonzero(labels < 5)
        rows = np.random.default_rng(seed).permutation(rows)[: int(round(len(rows) * share))]
        result = tlkeras.build_and_finetune(
            (images[rows], labels[rows]), backbone=backbone, weights=None, image_size=size, backbone_options=options,
            batch_size=32, seed=seed, stage1={"epochs": 0},
            stage2={"epochs": epochs, "unfreeze": "all", "train_bn": True, "learning_rate": 2e-3, "layer_decay": None},
            augment={"rotation": 0.1, "zoom": 0.1, "translation": 0.1},
            output_dir=os.path.join(CACHE, f"source-{name}-s{seed}"), export=False, report=False, tensorboard=False,
            verbose=0,
        )
        result.model.get_layer("backbone").save_weights(path)
        print(f"pretrained {name}: source val accuracy {result.metrics['accuracy']:.3f}", file=sys.stderr)
    return {**candidate, "weights": path}


def jittered_folder(train: str, copies: int) -> str:
    """The training folder with `copies - 1` jittered versions of each image beside it (shifted by up to 2 px,
    brightness x0.8-1.2, pixel noise): more images of the same task, written once."""
    import numpy as np
    import tensorflow as tf

    root = f"{train}-x{copies}"
    if os.path.isdir(root):
        return root
    rng = np.random.default_rng(0)
    for name in sorted(os.listdir(train)):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for f in sorted(os.listdir(os.path.join(train, name))):
            image = tf.io.decode_png(tf.io.read_file(os.path.join(train, name, f))).numpy().astype(np.float32)
            tf.io.write_file(os.path.join(root, name, f), tf.io.encode_png(image.astype(np.uint8)))
            for copy in range(1, copies):
                shifted = np.roll(image, tuple(rng.integers(-2, 3, 2)), axis=(0, 1))
                varied = np.clip(shifted * rng.uniform(0.8, 1.2) + rng.normal(0, 8, image.shape), 0, 255)
                tf.io.write_file(os.path.join(root, name, f"{f[:-4]}-{copy}.png"),
                                 tf.io.encode_png(varied.astype(np.uint8)))
    return root


def kendall_tau(x: list, y: list) -> float:
    """Kendall's tau-b (ties in either list counted as neither concordant nor discordant)."""
    concordant = discordant = ties_x = ties_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = ((concordant + discordant + ties_x) * (concordant + discordant + ties_y)) ** 0.5
    return (concordant - discordant) / denominator if denominator else float("nan")


def run_task(task: str, candidates: list[dict], seed: int, image_size: int = 32, finetune_seeds=(0,),
             sample=None, finetuned=None) -> dict:
    """Rank, then fine-tune every candidate (or take `finetuned`, {name: row of an earlier result})."""
    import keras

    import tlkeras
    from tlkeras.ranking import Ranking, rank_backbones

    from recipe_vs_tlkeras import target_folders

    train, val = target_folders(image_size, "fewshot" if task == "fewshot" else "full")
    if task.startswith("x"):
        train = jittered_folder(train, int(task[1:]))
    clock = time.time()
    ranking = rank_backbones(train, candidates, val_data=val, seed=seed, batch_size=32, by="logme", sample=sample)
    rank_seconds = time.time() - clock
    clock = time.time()
    logme_only = rank_backbones(train, candidates, val_data=val, seed=seed, batch_size=32, probe=False, sample=sample)
    logme_only_seconds = time.time() - clock
    rows = {e["backbone"]: dict(e) for e in ranking.entries}
    finetune_seconds = 0.0
    for candidate in candidates:
        if finetuned is not None:
            earlier = finetuned[candidate["name"]]
            rows[candidate["name"]].update({k: earlier[k] for k in ("finetuned_accuracy", "finetuned_accuracies",
                                                                   "finetune_seconds")})
            finetune_seconds += earlier["finetune_seconds"]
            continue
        accuracies, seconds = [], []
        for finetune_seed in finetune_seeds:
            keras.backend.clear_session()
            clock = time.time()
            options = {k: v for k, v in candidate.items() if k != "name"}
            result = tlkeras.build_and_finetune(
                train, val_data=val, seed=finetune_seed, batch_size=32, export=False, report=False, tensorboard=False,
                verbose=0, overwrite=True, **options,
                output_dir=os.path.join(CACHE, "runs", f"{task}-{image_size}px-{candidate['name']}-s{finetune_seed}"))
            seconds.append(time.time() - clock)
            accuracies.append(float(result.metrics["accuracy"]))
            print(f"{task} {candidate['name']} seed {finetune_seed}: fine-tuned accuracy {accuracies[-1]:.3f} in "
                  f"{seconds[-1]:.0f} s", file=sys.stderr)
        finetune_seconds += sum(seconds) / len(seconds)  # fine-tuning each candidate once
        rows[candidate["name"]].update(finetuned_accuracy=sum(accuracies) / len(accuracies),
                                       finetuned_accuracies=accuracies, finetune_seconds=sum(seconds) / len(seconds))
    names = [e["backbone"] for e in ranking.entries]
    accuracy = [rows[n]["finetuned_accuracy"] for n in names]
    best = max(names, key=lambda n: rows[n]["finetuned_accuracy"])
    by_probe = Ranking(ranking.entries, by="probe").recommended["backbone"]  # what tlkeras would pick by the probe
    return {
        "task": task, "rows": [rows[n] for n in names],
        "tau_logme": kendall_tau([rows[n]["logme"] for n in names], accuracy),
        "tau_probe": kendall_tau([rows[n]["probe_accuracy"] for n in names], accuracy),
        "best_finetuned": best, "top_logme": names[0], "top_probe": by_probe,
        "rank_seconds": rank_seconds, "finetune_seconds": finetune_seconds, "logme_only_seconds": logme_only_seconds,
        "logme_only_order": [e["backbone"] for e in logme_only.entries], "image_size": image_size,
    }


def format_table(result: dict, command: str) -> str:
    lines = [
        f"task `{result['task']}` at {result['image_size']} px, {len(result['rows'])} candidates, seed {result['seed']} "
        f"(fine-tuned accuracy: the mean over seeds {', '.join(map(str, result['finetune_seeds']))}); "
        f"{platform.machine()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}; `{command}`",
        "",
        "| candidate | LogME | probe acc. | rank s | fine-tuned acc. (defaults) | fine-tune s (one run) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["rows"]:
        lines.append(f"| {row['backbone']} | {row['logme']:.4f} | {row['probe_accuracy']:.3f} | {row['seconds']:.1f} | "
                     f"{row['finetuned_accuracy']:.3f} | {row['finetune_seconds']:.1f} |")
    best = {r["backbone"]: r["finetuned_accuracy"] for r in result["rows"]}
    lines += [
        "",
        f"- Kendall tau-b with the fine-tuned accuracy: LogME **{result['tau_logme']:.2f}**, linear probe "
        f"**{result['tau_probe']:.2f}**.",
        f"- best fine-tuned: {result['best_finetuned']} ({best[result['best_finetuned']]:.3f}); top by LogME: "
        f"{result['top_logme']} ({best[result['top_logme']]:.3f}); top by probe: {result['top_probe']} "
        f"({best[result['top_probe']]:.3f}).",
        f"- ranked on {result['rows'][0]['train_count']} training images"
        + (f" (a sample of {result['rows'][0]['sampled_from']})" if result["rows"][0].get("sampled_from") else "")
        + f"; ranking all candidates took {result['rank_seconds']:.0f} s, fine-tuning each of them once "
        + ("(in the last full run) " if result.get("finetune_from_earlier") else "")
        + f"{result['finetune_seconds']:.0f} s: {result['finetune_seconds'] / result['rank_seconds']:.1f}x; by LogME "
        f"alone (`probe=False`, the same order: {result['logme_only_order'] == [r['backbone'] for r in result['rows']]}) "
        f"{result['logme_only_seconds']:.0f} s: {result['finetune_seconds'] / result['logme_only_seconds']:.1f}x.",
    ]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    names = [n.strip() for n in args.candidates.split(",") if n.strip()]
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        raise SystemExit(f"unknown candidates {unknown}; choose from {', '.join(CANDIDATES)}")
    candidates = [pretrain(name, args.seed, args.image_size) for name in names]
    command = "python benchmarks/rank_backbones.py " + " ".join(argv if argv is not None else sys.argv[1:])
    tables = []
    for task in [t.strip() for t in args.task.split(",") if t.strip()]:
        seeds = [int(x) for x in args.finetune_seeds.split(",") if x.strip()]
        saved = os.path.join(CACHE, f"result-{task}-{args.image_size}px-s{args.seed}.json")
        finetuned = None
        if args.rank_only:
            with open(saved, encoding="utf-8") as f:
                earlier = json.load(f)
            finetuned, seeds = {row["backbone"]: row for row in earlier["rows"]}, earlier["finetune_seeds"]
        result = {**run_task(task, candidates, args.seed, args.image_size, seeds, args.rank_sample, finetuned),
                  "seed": args.seed, "finetune_seeds": seeds, "finetune_from_earlier": args.rank_only}
        if not args.rank_only:
            with open(saved, "w") as f:
                json.dump(result, f, indent=2)
        tables.append(format_table(result, command.strip()))
        print(tables[-1], flush=True)
    if args.write:
        with open(os.path.join(HERE, "RESULTS.md"), "a", encoding="utf-8") as f:
            f.write("\n\n## Issue 19: does the backbone ranking predict fine-tuned accuracy?\n\n")
            f.write("\n\n".join(tables) + "\n")


if __name__ == "__main__":
    main()
