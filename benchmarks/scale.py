"""Does a run stay bounded as the data grows? MobileNetV2 at 224 px on 1,000 / 5,000 / 20,000 images.

Data: scikit-learn's digits shipped with tlkeras, each image drawn again at 224 px with a random shift, scale
and noise, written once as JPEG files to benchmarks/.cache/scale-224/ (10 classes, 20,000 files); smaller sizes
are the first N files of each class (links). Every size runs in its own process (so memory is its own) with the
same settings: random init (time and memory do not depend on the weights), batch 32, the default
`memory_budget_mb` (1024), no export, report or TensorBoard, and with `--settings defaults` (the default)
tlkeras's own defaults: stage 1 for 5 epochs, stage 2 for 5 epochs on the top half of the layers, on activations
cached at the cut (from 5,000 images on more than the budget, so they spill to disk) - a user's run. With
`--settings light`, stage 1 for 3 epochs on cached features and stage 2 for 1 epoch on the top block
(`blocks:1`): the least training a run does after its one frozen pass, where the fixed costs show most.

Reported per size: seconds and images per second of each part (the cache pass is the frozen backbone's forward
rate: what the model consumes while caching), the input pipeline's own rate (decoding and resizing the same files
with tlkeras's pipeline, nothing else), the peak resident memory, what the run said about its caches (in
memory, or spilled to disk), and whether any spill folder was left behind. The model's working set is the peak
of the same run on 100 images (10 per class), where the caches hold a few MB: what the run needs whatever the
data's size. Memory is bounded when every size's peak stays within that plus `memory_budget_mb`.

    python benchmarks/scale.py --sizes 1000,5000,20000 [--settings light] [--repeats 3]

With `--repeats N` every size runs N times (each in its own process, the sizes interleaved) and the table gives
each figure's median run (by whole-run seconds).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, ".cache")
SIZE = 224


def rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def write_folder(count: int, seed: int = 0) -> str:
    """`count` jittered 224-px digits as JPEG files, classes 0-9 (written once)."""
    import numpy as np
    import tensorflow as tf

    from tlkeras.demo import load_digits

    root = os.path.join(CACHE, f"scale-{SIZE}", "all")
    marker = os.path.join(os.path.dirname(root), f".complete-{count}")
    if os.path.isfile(marker):
        return root
    images, labels = load_digits()
    rng = np.random.default_rng(seed)
    per_class = count // 10
    for digit in range(10):
        folder = os.path.join(root, str(digit))
        os.makedirs(folder, exist_ok=True)
        rows = np.flatnonzero(labels == digit)
        for i in range(per_class):
            path = os.path.join(folder, f"{i:05d}.jpg")
            if os.path.isfile(path):
                continue
            image = tf.constant(images[rng.choice(rows)][..., None], tf.float32)
            scale = rng.uniform(0.7, 1.0)
            inner = int(SIZE * scale)
            big = tf.image.resize(tf.image.grayscale_to_rgb(image), (inner, inner), method="bilinear")
            top, left = rng.integers(0, SIZE - inner + 1, 2)
            canvas = tf.image.pad_to_bounding_box(big, int(top), int(left), SIZE, SIZE)
            noisy = canvas + rng.normal(0, 12, (SIZE, SIZE, 3)).astype("float32")
            pixels = tf.cast(tf.clip_by_value(noisy, 0, 255), tf.uint8)
            tf.io.write_file(path, tf.io.encode_jpeg(pixels, quality=90))
    open(marker, "w").close()
    return root


def subset(root: str, count: int) -> str:
    """The first count/10 files of each class, as links in a sibling folder."""
    folder = os.path.join(os.path.dirname(root), f"n{count}")
    if not os.path.isdir(folder):
        for digit in sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))):
            os.makedirs(os.path.join(folder, digit), exist_ok=True)
            for name in sorted(os.listdir(os.path.join(root, digit)))[: count // 10]:
                os.symlink(os.path.join(root, digit, name), os.path.join(folder, digit, name))
    return folder


def pipeline_rate(folder: str, batch_size: int) -> float:
    """Images per second of tlkeras's training pipeline over the files (decode + resize), one pass."""
    from tlkeras.config import FinetuneConfig
    from tlkeras.data import make_datasets

    cfg = FinetuneConfig.from_dict({"data": folder, "val_split": 0, "batch_size": batch_size, "cache_images": False})
    ds = make_datasets(cfg, (SIZE, SIZE)).train
    start, count = time.time(), 0
    for x, _ in ds:
        count += int(x.shape[0])
    return count / (time.time() - start)


SETTINGS = {
    "light": {"stage1": {"epochs": 3}, "stage2": {"epochs": 1, "unfreeze": "blocks:1"}},
    "defaults": {},
}


def run_size(count: int, batch_size: int, settings: str = "defaults") -> dict:
    import logging

    import tlkeras

    folder = subset(write_folder(max(count, 10)), count)
    notes = []  # what the run says about its caches

    class Notes(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            if message.startswith(("cached ", "image cache")):
                notes.append(message)

    logger = logging.getLogger("tlkeras")
    logger.handlers[:] = [Notes()]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    rate = pipeline_rate(folder, batch_size)
    run_dir = os.path.join(CACHE, f"scale-run-{count}")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peaks = {"RssAnon": 0.0, "RssFile": 0.0}
    done = threading.Event()

    def sample():  # the peak of each kind of resident memory (VmHWM is only their sum's)
        while not done.wait(0.05):
            for field in peaks:
                peaks[field] = max(peaks[field], rss_mb(field))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.time()
    result = tlkeras.build_and_finetune(
        folder, backbone="mobilenetv2", weights=None, image_size=SIZE, batch_size=batch_size, seed=0,
        **SETTINGS[settings], output_dir=run_dir, overwrite=True, export=False, report=False, tensorboard=False,
        verbose=0)
    total = time.time() - start
    done.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_SELF)
    # Where a slow run's time went: CPU seconds the process got (user, system: page faults are system time)
    # against the wall time (2 cores: at most 2 x wall), and the page faults themselves.
    cpu = {"user_s": round(after.ru_utime - usage.ru_utime, 1), "system_s": round(after.ru_stime - usage.ru_stime, 1),
           "minor_faults": after.ru_minflt - usage.ru_minflt, "major_faults": after.ru_majflt - usage.ru_majflt}
    with open(os.path.join(run_dir, "run.json"), encoding="utf-8") as f:
        record = json.load(f)
    t = result.timings
    train, val = record["data"]["train"], record["data"]["val"]
    train_count, val_count = train["files"], val["files"]
    left = glob.glob(os.path.join(run_dir, "**", "tlkeras-cache-*"), recursive=True)
    left += glob.glob(os.path.join("/tmp", "tlkeras-cache-*"))
    return {
        "images": count, "train": train_count, "val": val_count, "seconds": total, "timings": t,
        "cache_pass_images_per_second": (train_count + val_count) / t["cache"] if t.get("cache") else None,
        "pipeline_images_per_second": rate, "peak_mb": rss_mb("VmHWM"),
        # anonymous memory (what the process holds) and mapped files (a spilled cache read through memory maps:
        # the page cache, which the kernel takes back when memory runs short), sampled every 50 ms
        "peak_anon_mb": peaks["RssAnon"], "peak_file_mb": peaks["RssFile"],
        "caching": "; ".join(notes), "spill_left": left, "accuracy": result.metrics["accuracy"],
        "memory_budget_mb": record["config"]["memory_budget_mb"], "cpu": cpu,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,5000,20000")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--settings", choices=sorted(SETTINGS), default="defaults")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--run", type=int, help=argparse.SUPPRESS)  # internal: one size in this process, print JSON
    args = p.parse_args(argv)
    if args.run:
        print("RESULT " + json.dumps(run_size(args.run, args.batch_size, args.settings)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    write_folder(max(sizes))  # once, before anything is timed
    runs: dict = {count: [] for count in [100, *sizes]}
    for _ in range(args.repeats):
        for count in runs:  # 100 images first: the working set (and the fixed costs)
            proc = subprocess.run([sys.executable, __file__, "--run", str(count), "--batch-size", str(args.batch_size),
                                   "--settings", args.settings], capture_output=True, text=True)
            if proc.returncode != 0 or "RESULT " not in proc.stdout:
                sys.stderr.write(proc.stderr[-4000:])
                raise SystemExit(f"the run on {count} images failed")
            runs[count].append(json.loads(proc.stdout.split("RESULT ", 1)[1]))
            print(json.dumps(runs[count][-1]), file=sys.stderr, flush=True)
    median = {count: sorted(rs, key=lambda r: r["seconds"])[len(rs) // 2] for count, rs in runs.items()}
    base = median.pop(100)
    working_set = max(r["peak_mb"] for r in runs[100])
    working_anon = max(r["peak_anon_mb"] for r in runs[100])
    command = f"python benchmarks/scale.py --sizes {args.sizes} --settings {args.settings} --repeats {args.repeats}"
    print(f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPU cores, "
          f"Python {platform.python_version()}; `{command}`" + (" (medians)" if args.repeats > 1 else "") + "\n")
    print("| images (train / val) | cache pass: s, images/s | pipeline images/s | stage 1 s | stage 2 s | whole run s "
          "| s per 1000 images | above the 100-image run: s per 1000 | CPU s (user / system) "
          "| peak MB (anonymous / mapped files) | peak within budget + working set | caches | spill left |")
    print("| --- |" + " ---: |" * 9 + " --- | --- | --- |")
    def within(r):
        budget = r["memory_budget_mb"]
        if r["peak_mb"] <= budget + working_set:
            return f"yes ({budget} + {working_set:.0f})"
        if r["peak_anon_mb"] <= budget + working_anon:  # over only by mapped files: the page cache
            return f"anonymous memory yes ({r['peak_anon_mb']:.0f} <= {budget} + {working_anon:.0f}); all NO"
        return f"NO ({budget} + {working_set:.0f})"

    for r in median.values():
        t, cpu = r["timings"], r["cpu"]
        print(f"| {r['images']} ({r['train']} / {r['val']}) | {t.get('cache', 0):.0f}, "
              f"{r['cache_pass_images_per_second']:.0f} | {r['pipeline_images_per_second']:.0f} | "
              f"{t.get('stage1', 0):.0f} | {t.get('stage2', 0):.0f} | {r['seconds']:.1f} | "
              f"{1000 * r['seconds'] / r['images']:.2f} | "
              f"{1000 * (r['seconds'] - base['seconds']) / (r['images'] - base['images']):.2f} | "
              f"{cpu['user_s']:.0f} / {cpu['system_s']:.0f} | "
              f"{r['peak_mb']:.0f} ({r['peak_anon_mb']:.0f} / {r['peak_file_mb']:.0f}) | "
              f"{within(r)} | "
              f"{r['caching']} | {'none' if not r['spill_left'] else ', '.join(r['spill_left'])} |")
    per_image = [r["seconds"] / r["images"] for r in median.values()]
    print(f"\nThe 100-image run (the working set, and the fixed costs): {base['seconds']:.1f} s, peak "
          f"{base['peak_mb']:.0f} MB. Time per image, slowest size / fastest: {max(per_image) / min(per_image):.2f}.")


if __name__ == "__main__":
    main()
