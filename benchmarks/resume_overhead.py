"""What saving the resume state after every epoch costs: time to write checkpoints/resume.npz and its size,
for the largest state a run writes (the whole model training, with Adam's moments), and the time to read it back.

    python benchmarks/resume_overhead.py [--image-size 128] [--repeats 5]

Compare the seconds with an epoch of stage 2 (benchmarks/RESULTS.md): the state is written once per epoch.
"""

import argparse
import os
import statistics
import tempfile
import time

import keras

import tlkeras
from tlkeras.resume import RunCheckpointer


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default="mobilenetv2,efficientnetb0")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{'backbone':<16} {'state MB':>9} {'save s (median)':>16} {'load+restore s':>15}")
    for name in args.backbones.split(","):
        model = tlkeras.build_model(name, 5, image_size=args.image_size, weights=None)
        for layer in model.layers:
            layer.trainable = True
        model.compile(optimizer=keras.optimizers.Adam(), loss="sparse_categorical_crossentropy")
        model.optimizer.build(model.trainable_variables)
        checkpointer = RunCheckpointer(model, tempfile.mkdtemp())
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            checkpointer.save(model, epochs_done=1, finished=False)
            seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        checkpointer.restore_weights(checkpointer.load())
        load = time.perf_counter() - start
        size = os.path.getsize(checkpointer.path) / 2**20
        print(f"{name:<16} {size:>9.1f} {statistics.median(seconds):>16.3f} {load:>15.3f}")


if __name__ == "__main__":
    main()
