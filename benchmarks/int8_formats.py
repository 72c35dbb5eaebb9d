"""Issue 18: what each export format costs and keeps, and what int8 needs to keep the answers.

For each backbone: pretrained on digits 0-4 (cached, as in rank_backbones.py), fine-tuned on digits 5-9 at 32 px
for a few epochs (an unsure model, the normal case on small data), then
- every file format: size, milliseconds per image (one image per call, this CPU), agreement with the Keras model
  on the validation images; int8 with the selective search when plain int8 falls short;
- ONNX both ways: tf2onnx from the serving function (what tlkeras uses) and Keras's own model.export("onnx");
- plain int8 agreement against the calibration sample: its size, drawn at random or class-balanced.

    python benchmarks/int8_formats.py                       # MobileNetV2 and EfficientNetB0, 3 + 1 epochs
    python benchmarks/int8_formats.py --backbones mobilenetv2-a0.35-src15 --calibration 25,100,400
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, ".cache", "int8")
sys.path.insert(0, HERE)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", default="mobilenetv2-a0.35-src15,efficientnetb0-src6",
                   help="comma-separated names of rank_backbones.CANDIDATES")
    p.add_argument("--epochs", default="3,1", help="stage-1,stage-2 epochs of the fine-tuning")
    p.add_argument("--calibration", default="25,50,100,200,400", help="calibration sample sizes for plain int8")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def finetune(name: str, epochs: tuple, seed: int) -> str:
    """The run directory of `name` fine-tuned on digits 5-9 (cached)."""
    import tlkeras
    from rank_backbones import CANDIDATES, pretrain
    from recipe_vs_tlkeras import target_folders

    candidate = pretrain(name, seed)
    run_dir = os.path.join(CACHE, f"{name}-e{epochs[0]}-{epochs[1]}-s{seed}")
    if not os.path.isfile(os.path.join(run_dir, "model.keras")):
        train, val = target_folders(32)
        backbone, options, size, _, _ = CANDIDATES[name]
        tlkeras.build_and_finetune(
            train, val_data=val, backbone=backbone, backbone_options=options, weights=candidate["weights"],
            image_size=size, batch_size=16, seed=seed, stage1={"epochs": epochs[0], "learning_rate": 0.01},
            stage2={"epochs": epochs[1], "unfreeze": "all", "train_bn": True, "learning_rate": 0.001,
                    "layer_decay": None, "schedule": "constant", "warmup_epochs": 0},
            output_dir=run_dir, overwrite=True, export=False, report=False, tensorboard=False, verbose=0)
    return run_dir


def ms_per_image(classifier, pixels, limit: int = 64) -> float:
    from tlkeras.export.selective_int8 import milliseconds_per_image

    classifier(pixels[:1])  # warm-up
    return milliseconds_per_image(classifier, pixels, limit)


def formats_table(run_dir: str) -> list:
    import numpy as np
    import tensorflow as tf

    from tlkeras.export import onnx, tflite
    from tlkeras.export.parity import measure
    from tlkeras.export.registry import CALIBRATION_IMAGES, ExportJob
    from tlkeras.model import predict_function
    from tlkeras.rundir import load_run

    model, class_names, _ = load_run(run_dir)
    job = ExportJob(model, run_dir, class_names, 3, None)
    val, calibration = job.pixels("val"), job.pixels("train", CALIBRATION_IMAGES)
    predict = predict_function(model)  # the compiled forward pass, as the SavedModel runs it
    keras_ms = ms_per_image(lambda x: np.asarray(predict(tf.constant(x))), val)
    rows = [{"format": "keras (compiled predict)", "kB": os.path.getsize(os.path.join(run_dir, "model.keras")) / 1024,
             "ms": keras_ms, "agreement": 1.0}]
    for kind in ("float32", "float16", "int8"):
        content = tflite.convert(model, kind, calibration)
        classifier = tflite.TFLiteClassifier(content)
        parity = measure(model, classifier, val, kind, tflite.THRESHOLDS[kind])
        rows.append({"format": f"tflite {kind}", "kB": len(content) / 1024, "ms": ms_per_image(classifier, val),
                     "agreement": parity.top1_agreement, "max_dp": parity.max_abs_diff})
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        try:
            parity = tflite.export_tflite(model, out, class_names, kinds=["int8"], check_pixels=val,
                                          representative=calibration)["int8"]
            seconds = time.perf_counter() - start
            path = os.path.join(out, tflite.FILES["int8"])
            chosen = parity.selective or {}
            rows.append({"format": "tflite int8 (tlkeras: selective when needed)", "kB": os.path.getsize(path) / 1024,
                         "ms": ms_per_image(tflite.TFLiteClassifier(path), val), "agreement": parity.top1_agreement,
                         "max_dp": parity.max_abs_diff, "float_layers": chosen.get("float_layers", []),
                         "layers": chosen.get("layers_measured"), "tried": chosen.get("tried"),
                         "export_seconds": round(seconds, 1)})
        except Exception as e:  # noqa: BLE001 - reported in the table
            rows.append({"format": "tflite int8 (tlkeras: selective when needed)", "error": str(e)[:300]})
    try:
        content = onnx.convert(model)
        classifier = onnx.ONNXClassifier(content)
        parity = measure(model, classifier, val, "onnx", onnx.THRESHOLD)
        rows.append({"format": "onnx (tf2onnx, serving function)", "kB": len(content) / 1024,
                     "ms": ms_per_image(classifier, val), "agreement": parity.top1_agreement,
                     "max_dp": parity.max_abs_diff})
    except Exception as e:  # noqa: BLE001 - reported in the table
        rows.append({"format": "onnx (tf2onnx, serving function)", "error": f"{type(e).__name__}: {str(e)[:200]}"})
    with tempfile.TemporaryDirectory() as out:
        path = os.path.join(out, "model.onnx")
        try:
            model.export(path, format="onnx", verbose=False)
            classifier = onnx.ONNXClassifier(path)
            parity = measure(model, classifier, val, "onnx", onnx.THRESHOLD)
            rows.append({"format": "onnx (keras model.export)", "kB": os.path.getsize(path) / 1024,
                         "ms": ms_per_image(classifier, val), "agreement": parity.top1_agreement,
                         "max_dp": parity.max_abs_diff})
        except Exception as e:  # noqa: BLE001 - reported in the table
            rows.append({"format": "onnx (keras model.export)", "error": f"{type(e).__name__}: {str(e)[:200]}"})
    return rows


def calibration_table(run_dir: str, sizes: list) -> list:
    import numpy as np

    from tlkeras.export import tflite
    from tlkeras.export.parity import measure
    from tlkeras.export.registry import ExportJob
    from tlkeras.rundir import load_run

    model, class_names, _ = load_run(run_dir)
    job = ExportJob(model, run_dir, class_names, 3, None)
    val, train = job.pixels("val"), job.pixels("train")
    balanced = {n: job.pixels("train", n) for n in sizes}
    rows = []
    for n in sizes:
        for how, pixels in (("random", train[np.random.default_rng(1).permutation(len(train))[:n]]),
                            ("balanced", balanced[n])):
            classifier = tflite.TFLiteClassifier(tflite.convert(model, "int8", pixels))
            rows.append({"images": n, "sample": how,
                         "agreement": measure(model, classifier, val, "int8", 0.97).top1_agreement})
    return rows


def main(argv=None):
    args = parse_args(argv)
    epochs = tuple(int(e) for e in args.epochs.split(","))
    sizes = [int(n) for n in args.calibration.split(",")]
    results = {}
    for name in args.backbones.split(","):
        run_dir = finetune(name, epochs, args.seed)
        metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
        results[name] = {"val_accuracy": metrics.get("accuracy"), "formats": formats_table(run_dir),
                         "calibration": calibration_table(run_dir, sizes)}
        print(f"\n{name} fine-tuned {epochs[0]} + {epochs[1]} epochs: val accuracy {metrics.get('accuracy'):.3f}")
        print(f"{'format':46s} {'kB':>8s} {'ms/img':>7s} {'agree':>6s} {'max dp':>7s}")
        for row in results[name]["formats"]:
            if "error" in row:
                print(f"{row['format']:46s} failed: {row['error']}")
                continue
            print(f"{row['format']:46s} {row['kB']:8.1f} {row['ms']:7.3f} {row['agreement']:6.3f} "
                  f"{row.get('max_dp', 0):7.3f}" + (f"  float: {len(row['float_layers'])}/{row['layers']} "
                                                    f"{', '.join(row['float_layers'])} ({row['export_seconds']} s)"
                                                    if row.get("float_layers") else ""))
        print("plain int8 agreement by calibration sample:")
        for row in results[name]["calibration"]:
            print(f"  {row['images']:4d} {row['sample']:9s} {row['agreement']:.3f}")
    os.makedirs(CACHE, exist_ok=True)
    with open(os.path.join(CACHE, f"result-e{args.epochs.replace(',', '-')}-s{args.seed}.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
