"""KerasHub's own fine-tuning recipe against tlkeras (full fine-tuning and LoRA) on one text task, same run.

Task: synthetic reviews (written once to benchmarks/.cache/text/): 3 classes, each text 10-40 words of a
neutral vocabulary with 1-3 cue words of its class and, in a third of the texts, one cue word of another
class. The encoder is a BERT preset saved here with `save_to_preset` (random weights: this machine has no
network), with a WordPiece vocabulary of the task's words:

    --size small   4 layers, hidden 256, 4 heads (BERT-mini's shape)
    --size base    12 layers, hidden 768, 12 heads (BERT-base's shape, 110 M parameters)

Sides, each in its own process (so memory is its own):
(a) keras-hub: the KerasHub guide's recipe - `TextClassifier.from_preset(folder, num_classes=...)` with the
    preset's preprocessor, `backbone.trainable = False` and `fit` (Adam 1e-3) for the frozen epochs, then
    `backbone.trainable = True`, recompiled with Adam 5e-5 (KerasHub's default) and fitted again.
(b) tlkeras-full: `tlkeras.build_and_finetune` with its defaults, `stage2.unfreeze: all`.
(c) tlkeras-lora: the same with `stage2.method: lora` (rank 8 on the attention query and value projections).
All sides: the same texts, sequence length, batch size, epochs and seed; no export, report or TensorBoard.
Peak memory is the process's resident peak during stage 2 (VmHWM, reset as stage 2 starts; and what it adds
above the resident memory at its start) and during the whole run.

    python benchmarks/text_encoders.py --size small --write
    python benchmarks/text_encoders.py --size base --texts 96 --val-texts 32 --stage1-epochs 1 --stage2-epochs 1
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, ".cache", "text")
SIZES = {
    "small": {"num_layers": 4, "num_heads": 4, "hidden_dim": 256, "intermediate_dim": 1024},
    "base": {"num_layers": 12, "num_heads": 12, "hidden_dim": 768, "intermediate_dim": 3072},
}
CLASSES = ("praise", "complaint", "question")
SIDES = ("keras-hub", "tlkeras-full", "tlkeras-lora")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="small", choices=sorted(SIZES))
    p.add_argument("--texts", type=int, default=3000, help="training texts")
    p.add_argument("--val-texts", type=int, default=600)
    p.add_argument("--sequence-length", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--stage1-epochs", type=int, default=5)
    p.add_argument("--stage2-epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sides", default=",".join(SIDES))
    p.add_argument("--tlkeras-options", default="{}", help="JSON of extra build_and_finetune options (tlkeras sides)")
    p.add_argument("--stage2-options", default="{}",
                   help='JSON of extra stage-2 keys for the tlkeras sides, e.g. \'{"recompute": false}\'')
    p.add_argument("--write", action="store_true", help="append the table to benchmarks/RESULTS.md")
    p.add_argument("--run", help=argparse.SUPPRESS)  # internal: run one side and print JSON
    return p.parse_args(argv)


# === Task ===


def words() -> dict:
    """{"neutral": [...], class: [cue words]}: made-up lowercase words, one WordPiece token each."""
    syllables = ["ka", "lo", "mi", "nu", "pe", "ri", "so", "ta", "ve", "zu"]
    made = [a + b + c for a in syllables for b in syllables for c in syllables[:4]]  # 400 words
    out = {"neutral": made[:200]}
    for i, name in enumerate(CLASSES):
        out[name] = made[200 + 20 * i: 220 + 20 * i]
    return out


def rows(count: int, seed: int) -> list[tuple[str, str]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    vocab = words()
    out = []
    for i in range(count):
        label = CLASSES[i % len(CLASSES)]
        text = list(rng.choice(vocab["neutral"], int(rng.integers(10, 41))))
        cues = list(rng.choice(vocab[label], int(rng.integers(1, 4))))
        if rng.random() < 1 / 3:
            cues.append(str(rng.choice(vocab[CLASSES[(i + 1) % len(CLASSES)]])))
        for cue in cues:
            text.insert(int(rng.integers(0, len(text) + 1)), str(cue))
        out.append((" ".join(map(str, text)), label))
    return out


def prepare_task(args) -> dict:
    """The train/val CSVs and the preset folder (all cached)."""
    import keras

    os.makedirs(CACHE, exist_ok=True)
    paths = {}
    for split, count, seed in (("train", args.texts, args.seed), ("val", args.val_texts, args.seed + 1000)):
        path = os.path.join(CACHE, f"{split}-{count}-s{seed}.csv")
        if not os.path.isfile(path):
            with open(path, "w", encoding="utf-8", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["text", "label"])
                writer.writerows(rows(count, seed))
        paths[split] = path
    preset = os.path.join(CACHE, f"bert-{args.size}")
    if not os.path.isfile(os.path.join(preset, "config.json")):
        import keras_hub

        keras.utils.set_random_seed(0)
        vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted({w for ws in words().values() for w in ws})]
        backbone = keras_hub.models.BertBackbone(vocabulary_size=len(vocabulary), max_sequence_length=512,
                                                 **SIZES[args.size])
        backbone.save_to_preset(preset)
        keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=True).save_to_preset(preset)
    paths["preset"] = preset
    return paths


def read_csv(path):
    with open(path, encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    return [r["text"] for r in table], [CLASSES.index(r["label"]) for r in table]


# === Memory ===


def peak_rss_mb(field: str = "VmHWM") -> float:
    """Peak resident memory since the process started or since `reset_peak` (VmHWM; "VmRSS": now)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset the peak resident set size (Linux >= 4.0)
        f.write("5")


# === Side (a): KerasHub's recipe ===


def run_keras_hub(args, task) -> dict:
    import keras
    import keras_hub
    import tensorflow as tf

    keras.utils.set_random_seed(args.seed)
    t0 = time.time()
    train_x, train_y = read_csv(task["train"])
    val_x, val_y = read_csv(task["val"])
    preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(
        task["preset"], sequence_length=args.sequence_length)
    classifier = keras_hub.models.TextClassifier.from_preset(task["preset"], num_classes=len(CLASSES),
                                                             preprocessor=preprocessor)
    train = tf.data.Dataset.from_tensor_slices((train_x, train_y)).shuffle(len(train_x), seed=args.seed)
    train = train.batch(args.batch_size)
    val = tf.data.Dataset.from_tensor_slices((val_x, val_y)).batch(args.batch_size)
    classifier.backbone.trainable = False
    classifier.compile(optimizer=keras.optimizers.Adam(1e-3))
    setup = time.time() - t0
    t1 = time.time()
    classifier.fit(train, validation_data=val, epochs=args.stage1_epochs, verbose=0)
    stage1 = time.time() - t1
    whole, before = peak_rss_mb(), peak_rss_mb("VmRSS")
    reset_peak()
    t2 = time.time()
    classifier.backbone.trainable = True
    classifier.compile(optimizer=keras.optimizers.Adam(5e-5))  # KerasHub's default rate
    trainable = sum(int(w.numpy().size) for w in classifier.trainable_weights)
    classifier.fit(train, validation_data=val, epochs=args.stage1_epochs + args.stage2_epochs,
                   initial_epoch=args.stage1_epochs, verbose=0)
    stage2 = time.time() - t2
    stage2_peak = peak_rss_mb()
    _, accuracy = classifier.evaluate(val, verbose=0)
    return {"setup": setup, "stage1": stage1, "stage2": stage2, "accuracy": float(accuracy),
            "stage2_trainable_params": trainable, "stage2_peak_rss_mb": stage2_peak,
            "stage2_extra_mb": stage2_peak - before, "peak_rss_mb": max(whole, stage2_peak)}


# === Sides (b), (c): tlkeras ===


def run_tlkeras(args, task, method: str) -> dict:
    import logging

    import keras

    import tlkeras

    logging.getLogger("tlkeras").setLevel(logging.WARNING)
    peaks = []

    class StagePeaks(keras.callbacks.Callback):
        """The resident peak of each fit (stage 1's head on cached features, then stage 2)."""

        def on_train_begin(self, logs=None):
            peaks.append([peak_rss_mb(), peak_rss_mb("VmRSS")])
            reset_peak()

        def on_train_end(self, logs=None):
            peaks[-1].append(peak_rss_mb())

    stage2 = {"epochs": args.stage2_epochs, "unfreeze": "all"} if method == "full" else {
        "epochs": args.stage2_epochs, "method": "lora"}
    stage2.update(json.loads(args.stage2_options))
    t0 = time.time()
    result = tlkeras.build_and_finetune(
        task["train"], val_data=task["val"], backbone=f"kerashub:{task['preset']}",
        backbone_options={"sequence_length": args.sequence_length}, batch_size=args.batch_size, seed=args.seed,
        stage1={"epochs": args.stage1_epochs}, stage2=stage2, callbacks=[StagePeaks()],
        output_dir=os.path.join(CACHE, f"run-{method}"), overwrite=True, export=False, report=False,
        tensorboard=False, verbose=0, **json.loads(args.tlkeras_options),
    )
    total = time.time() - t0
    with open(os.path.join(result.run_dir, "run.json"), encoding="utf-8") as f:
        record = json.load(f)
    if method == "lora":
        trainable = record["lora"]["trainable_params"]
    else:  # unfreeze all: the whole encoder and the head
        trainable = sum(int(w.numpy().size) for w in result.model.weights)
    t = result.timings
    return {
        "setup": t["data"] + t["build"], "stage1": t.get("stage1", 0.0), "stage1_cache_pass": t.get("cache"),
        "stage2": t.get("stage2", 0.0), "total": total - t.get("evaluate", 0.0),
        "accuracy": float(result.metrics["accuracy"]), "stage2_trainable_params": trainable,
        "stage2_peak_rss_mb": peaks[-1][2], "stage2_extra_mb": peaks[-1][2] - peaks[-1][1],
        # [peak so far, resident now, peak during the fit] of each fit
        "peak_rss_mb": max([e[0] for e in peaks] + [e[2] for e in peaks] + [peak_rss_mb()]),
    }


# === Driver ===


def run_side(args) -> dict:
    task = prepare_task(args)
    if args.run == "keras-hub":
        out = run_keras_hub(args, task)
    else:
        out = run_tlkeras(args, task, args.run.split("-", 1)[1])
    out.setdefault("total", out["setup"] + out["stage1"] + out["stage2"])
    out["train_texts"] = args.texts
    return out


def main(argv=None):
    args = parse_args(argv)
    if args.run:
        print("RESULT " + json.dumps(run_side(args)))
        return
    prepare_task(args)  # once, before any side is timed
    results = {}
    for side in args.sides.split(","):
        cmd = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--run", side]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"{side} failed")
        results[side] = json.loads(lines[-1][len("RESULT "):])
        print(f"{side}: {results[side]}", file=sys.stderr)
    table = format_table(args, results)
    print(table)
    if args.write:
        with open(os.path.join(HERE, "RESULTS.md"), "a", encoding="utf-8") as f:
            f.write(table + "\n")


def format_table(args, results) -> str:
    import tensorflow as tf

    cols = list(results)
    rows = [
        ("setup: data and model (s)", "setup", "{:.1f}"),
        ("stage 1, encoder frozen (s)", "stage1", "{:.1f}"),
        ("  of which the cache pass (s)", "stage1_cache_pass", "{:.1f}"),
        ("stage 2 (s)", "stage2", "{:.1f}"),
        ("total (s)", "total", "{:.1f}"),
        ("stage 2 trainable parameters", "stage2_trainable_params", "{:,}"),
        ("stage 2 peak memory (MB)", "stage2_peak_rss_mb", "{:.0f}"),
        ("  of which above its start (MB)", "stage2_extra_mb", "{:.0f}"),
        ("run peak memory (MB)", "peak_rss_mb", "{:.0f}"),
        ("val accuracy", "accuracy", "{:.4f}"),
    ]
    shape = SIZES[args.size]
    lines = [
        f"### BERT {args.size} ({shape['num_layers']} layers, hidden {shape['hidden_dim']}, random weights): "
        f"{args.texts} training texts, sequence length {args.sequence_length}, batch {args.batch_size}, "
        f"{args.stage1_epochs}+{args.stage2_epochs} epochs",
        "",
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}, TensorFlow {tf.__version__}",
        "",
        "`python benchmarks/text_encoders.py " + " ".join(a for a in sys.argv[1:] if a != "--write") + "`",
        "",
        "| | " + " | ".join(cols) + " |",
        "| --- |" + " ---: |" * len(cols),
    ]
    for label, key, fmt in rows:
        cells = [fmt.format(results[c][key]) if isinstance(results[c].get(key), (int, float)) else "-" for c in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    hub, full, lora = (results.get(s) for s in SIDES)
    if hub and full and full["stage1"]:
        lines.append("")
        lines.append(f"- stage 1: KerasHub's frozen epochs {hub['stage1']:.1f} s against tlkeras's "
                     f"{full['stage1']:.1f} s: {hub['stage1'] / full['stage1']:.1f}x faster")
    if full and lora and full.get("stage2_peak_rss_mb") and lora.get("stage2_peak_rss_mb"):
        lines.append(f"- stage 2 peak memory: LoRA {lora['stage2_peak_rss_mb']:.0f} MB against full fine-tuning's "
                     f"{full['stage2_peak_rss_mb']:.0f} MB: "
                     f"{100 * lora['stage2_peak_rss_mb'] / full['stage2_peak_rss_mb']:.0f} %; what stage 2 adds above "
                     f"its start: {lora['stage2_extra_mb']:.0f} MB against {full['stage2_extra_mb']:.0f} MB")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
