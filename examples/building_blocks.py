"""The building blocks of tlkeras in a script: build_model -> finetune -> export_saved_model.

Runs offline in about a minute: a backbone is first "pretrained" on digits 0-4 (the
source domain) and then fine-tuned in two stages on digits 5-9 (the target domain).

    python examples/building_blocks.py [OUTPUT_DIR]
"""

import os
import sys

import numpy as np
import tensorflow as tf

import tlkeras
from tlkeras.data import prepare_image
from tlkeras.demo import load_digits

out = sys.argv[1] if len(sys.argv) > 1 else "runs/building_blocks"
os.makedirs(out, exist_ok=True)
images, labels = load_digits()
pixels = prepare_image(images[..., None], (32, 32)).numpy()  # the same resize as training and serving


def dataset(rows, target_labels, shuffle):
    ds = tf.data.Dataset.from_tensor_slices((pixels[rows], target_labels))
    return (ds.shuffle(len(rows), seed=0) if shuffle else ds).batch(32)


# 1. Pretrain on digits 0-4 from scratch (every layer, BatchNormalization included).
source = np.flatnonzero(labels < 5)
model = tlkeras.build_model("mobilenetv2", 5, image_size=32, weights=None, backbone_options={"alpha": 0.35})
tlkeras.finetune(
    model, dataset(source, labels[source], True),
    stage1={"epochs": 0}, stage2={"epochs": 6, "unfreeze": "all", "train_bn": True, "learning_rate": 2e-3},
    verbose=0,
)
weights = os.path.join(out, "digits04_backbone.weights.h5")
model.get_layer("backbone").save_weights(weights)

# 2. Fine-tune on digits 5-9 in two stages from those weights.
rng = np.random.default_rng(0)
target = rng.permutation(np.flatnonzero(labels >= 5))
train, val = target[:300], target[300:]
model = tlkeras.build_model("mobilenetv2", 5, image_size=32, weights=weights, backbone_options={"alpha": 0.35})
history = tlkeras.finetune(
    model, dataset(train, labels[train] - 5, True), dataset(val, labels[val] - 5, False),
    stage1={"epochs": 3, "learning_rate": 1e-2},
    stage2={"epochs": 3, "unfreeze": "blocks:6", "train_bn": True, "learning_rate": 1e-3},
    verbose=0,
)
print("stage of each epoch:  ", history["stage"])
print("validation accuracy:  ", [round(a, 3) for a in history["val_accuracy"]])

# 3. Export for TF Serving and ask the SavedModel about one image.
export_dir = tlkeras.export_saved_model(model, os.path.join(out, "export"), [str(d) for d in range(5, 10)])
serve = tf.saved_model.load(export_dir).signatures["serving_default"]
image = np.repeat(images[val[0]][..., None], 3, axis=-1)
answer = serve(image_bytes=tf.constant([tf.io.encode_png(image).numpy()]))
print("exported to:          ", export_dir)
print(f"image of a {labels[val[0]]} ->       ", answer["classes"].numpy()[0][0].decode(),
      f"({answer['scores'].numpy()[0][0]:.0%})")
