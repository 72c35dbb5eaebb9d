"""A training run in its own process, for the resume tests: it can SIGKILL itself mid-epoch.

python resume_worker.py OPTIONS_JSON [STAGE EPOCH]: build_and_finetune(**OPTIONS); with STAGE and
EPOCH (1-based, counted over the run) the process kills itself with SIGKILL after the first
training batch of that epoch - no Python cleanup, no finally blocks, like `kill -9`.
python resume_worker.py OPTIONS_JSON report|export: killed while the report writes its first
picture, or while the export checks its staged SavedModel (each leaves its temporary files).
"""

import json
import os
import signal
import sys

import keras

import tlkeras


class KillMidEpoch(keras.callbacks.Callback):
    def __init__(self, stage: int, epoch: int):
        super().__init__()
        self.stage = 1  # tlkeras sets it as each stage starts
        self.target = (stage, epoch)
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        if (self.stage, self.epoch) == self.target:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    options = json.loads(sys.argv[1])
    if sys.argv[2:3] == ["report"]:
        import tlkeras.report
        from tlkeras.atomic import atomic_path

        def killed_in_the_report(*args, **kwargs):
            with atomic_path(os.path.join(options["output_dir"], "training_curves.png"), suffix=".png"):
                os.kill(os.getpid(), signal.SIGKILL)

        tlkeras.report.write_report = killed_in_the_report
    elif sys.argv[2:3] == ["export"]:
        import tlkeras.export.saved_model

        tlkeras.export.saved_model.verify_export = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
    elif len(sys.argv) > 2:
        options["callbacks"] = [KillMidEpoch(int(sys.argv[2]), int(sys.argv[3]))]
    tlkeras.build_and_finetune(verbose=0, **options)
