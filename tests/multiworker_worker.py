"""One worker of a real two-process MultiWorkerMirroredStrategy run, for tests/test_distribute.py.

python multiworker_worker.py TF_CONFIG_JSON OPTIONS_JSON WEIGHTS_OUT [STAGE EPOCH]
TF_CONFIG is set before TensorFlow starts; the run is build_and_finetune(**OPTIONS) with the
strategy chosen by `auto` (TF_CONFIG names two workers); the final weights go to WEIGHTS_OUT
(.npz) so the test can compare the workers. With STAGE and EPOCH the process SIGKILLs itself
after the first training batch of that epoch.

Nothing happens on import (pytest imports this file when it collects doctests).
"""

import json
import os
import signal
import sys


def main(argv):
    os.environ["TF_CONFIG"] = argv[1]  # before TensorFlow is imported
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np

    import tlkeras

    class KillMidEpoch(keras.callbacks.Callback):
        def __init__(self, stage, epoch):
            super().__init__()
            self.stage, self.target, self.epoch = 1, (stage, epoch), 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch + 1

        def on_train_batch_end(self, batch, logs=None):
            if (self.stage, self.epoch) == self.target:
                os.kill(os.getpid(), signal.SIGKILL)

    options = json.loads(argv[2])
    if len(argv) > 5:
        options["callbacks"] = [KillMidEpoch(int(argv[4]), int(argv[5]))]
    result = tlkeras.build_and_finetune(verbose=0, **options)
    np.savez(argv[3], *[np.asarray(w) for w in result.model.get_weights()])
    print("RESULT", json.dumps({"run_dir": result.run_dir, "export_dir": result.export_dir,
                                "epochs": result.history["epoch"], "stages": result.history["stage"]}))


if __name__ == "__main__":
    main(sys.argv)
