"""What a `tlkeras tune` search costs against one default run, and what it finds, on the few-labels tasks.

For each task and seed (few_labels.py's tasks: the same labelled draw, backbone and held-out test set):

- defaults: one `build_and_finetune` with tlkeras's defaults - its whole-job seconds (in-process) and test accuracy;
- search: `tlkeras.tune` over the default space with N trials on the same data - its seconds (the data and the model
  built once, the frozen outputs shared), how many trials were pruned, the backbone passes it ran, and the test
  accuracy of the best trial's settings trained as a normal run (`best.yaml`; not counted in the search's seconds).

    python benchmarks/tune_cost.py --tasks digits:20 --seeds 0 --trials 30

The issue's target: 30 trials in at most 6x one default run's time.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from few_labels import CACHE, _test_accuracy, get_task, parse_tasks  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="digits:20")
    p.add_argument("--seeds", default="0")
    p.add_argument("--trials", type=int, default=30)
    args = p.parse_args(argv)

    import tlkeras

    logging.getLogger("tlkeras").setLevel(logging.WARNING)
    print("| task | seed | default run (s) | search (s) | ratio | pruned | backbone passes | defaults test acc | "
          "tuned test acc |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, per_class in parse_tasks(args.tasks):
        task = get_task(name)
        for seed in (int(s) for s in args.seeds.split(",")):
            x, y, _ = task.draw(per_class, seed)
            common = {**task.backbone(), "seed": seed, "export": False, "report": False, "tensorboard": False,
                      "verbose": 0}
            folder = os.path.join(CACHE, "tune-cost")
            shutil.rmtree(folder, ignore_errors=True)
            start = time.perf_counter()
            default = tlkeras.build_and_finetune((x, y), output_dir=os.path.join(folder, "default"), **common)
            default_seconds = time.perf_counter() - start
            start = time.perf_counter()
            search = tlkeras.tune((x, y), n_trials=args.trials, output_dir=os.path.join(folder, "search"), **common)
            search_seconds = time.perf_counter() - start
            best = tlkeras.build_and_finetune(config=search.best_config, data=(x, y), verbose=0, overwrite=True)
            pruned = sum(t["state"] == "pruned" for t in search.trials)
            passes = sum(t["backbone_passes"] or 0 for t in search.trials)
            print(f"| {name}:{per_class} | {seed} | {default_seconds:.0f} | {search_seconds:.0f} | "
                  f"{search_seconds / default_seconds:.1f}x | {pruned} of {len(search.trials)} | {passes} | "
                  f"{_test_accuracy(default.model, task):.3f} | {_test_accuracy(best.model, task):.3f} |", flush=True)


if __name__ == "__main__":
    main()
