"""Fine-tune on your own photos: one subfolder per class.

    python examples/finetune_folder.py path/to/photos [--backbone efficientnetb0] [--weights imagenet]

ImageNet weights are downloaded once to ~/.keras/models (pass --weights none to start from
random weights, or a path to a weights file you saved).
"""

import argparse

import tlkeras

parser = argparse.ArgumentParser()
parser.add_argument("data")
parser.add_argument("--backbone", default="efficientnetb0")
parser.add_argument("--weights", default="imagenet")
parser.add_argument("--image-size", type=int, default=None)
parser.add_argument("--epochs", type=int, default=5, help="epochs of each stage")
parser.add_argument("--output-dir", default="runs/photos")
args = parser.parse_args()

result = tlkeras.build_and_finetune(
    args.data,
    backbone=args.backbone,
    weights=None if args.weights.lower() == "none" else args.weights,
    image_size=args.image_size,
    augment={"flip": "horizontal", "rotation": 0.05, "zoom": 0.1},
    stage1={"epochs": args.epochs, "early_stopping": 3},
    stage2={"epochs": args.epochs, "unfreeze": "blocks:2", "early_stopping": 3},
    output_dir=args.output_dir,
)
print(f"validation accuracy {result.metrics['accuracy']:.3f}")
print(f"TF Serving model:   {result.export_dir}")
