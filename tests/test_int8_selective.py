"""Issue 18: int8 that keeps the answers - the worst layers in float when plain int8 falls short, a class-balanced
calibration sample."""

import json
import os

import numpy as np
import pytest

from tlkeras.export import selective_int8, tflite
from tlkeras.export.parity import Parity
from tlkeras.export.registry import balanced_sample


def _fake_search(monkeypatch, agreement_of_count, bar=0.97, layers=10, failing=()):
    """search() with the debugger and the quantizer replaced: layer i's name is "L<i>" (worst first), a model's
    content is its float layers, and its agreement is agreement_of_count(number of float layers)."""
    monkeypatch.setattr(selective_int8, "layer_errors",
                        lambda *a: ([(f"L{i}", 1.0 / (i + 1)) for i in range(layers)], b"calibrated"))

    def quantize(calibrated, float_layers):
        if len(float_layers) in failing:
            raise RuntimeError("the quantizer refused")
        return tuple(float_layers)

    monkeypatch.setattr(selective_int8, "quantize", quantize)
    return selective_int8.search(None, lambda content: Parity("int8", 100, agreement_of_count(len(content)), 0.1, bar),
                                 bar)


def test_the_search_finds_the_fewest_worst_layers_that_reach_the_bar(monkeypatch):
    found = _fake_search(monkeypatch, lambda k: 0.9 + 0.01 * k)  # 7 layers reach 0.97
    assert found.float_layers == [f"L{i}" for i in range(7)] and found.parity.top1_agreement == pytest.approx(0.97)
    assert [t["float_layers"] for t in found.tried] == [1, 2, 4, 8, 6, 7]  # doubling, then halving the interval
    assert found.layers == 10


def test_the_search_gives_up_when_no_count_reaches_the_bar_and_skips_models_it_cannot_make(monkeypatch):
    assert _fake_search(monkeypatch, lambda k: 0.5, failing={10}) is None  # all in float: refused, not a pass
    found = _fake_search(monkeypatch, lambda k: 1.0 if k >= 3 else 0.0, failing={2})
    assert found.float_layers == ["L0", "L1", "L2"]


def test_layer_names_are_the_keras_layers():
    assert selective_int8.layer_name("tlkeras_mobilenetv2_1/backbone_1/block_16_project_BN_1/batchnorm/add_1;"
                                     "tlkeras_mobilenetv2_1/backbone_1/block_16_project_1/convolution") == \
        "block_16_project_BN"
    assert selective_int8.layer_name("tlkeras_mobilenetv2_1/predictions_1/MatMul") == "predictions"


def test_the_calibration_sample_is_class_balanced():
    labels = np.array([0] * 80 + [1] * 15 + [2] * 5)
    rows = balanced_sample(labels, 30)
    assert len(set(rows.tolist())) == 30 and np.bincount(labels[rows]).tolist() == [13, 12, 5]
    assert balanced_sample(labels, 30).tolist() == rows.tolist()  # seeded
    assert len(balanced_sample(labels, 500)) == 100  # never more rows than there are
    multi = np.zeros((40, 3), int)
    multi[:30, 0] = 1
    multi[30:, 2] = 1
    multi[30:34, 0] = 1  # these rows count under their rarest label, 2
    assert int(multi[balanced_sample(multi, 20), 2].sum()) == 10  # half from the rare label's 10 rows


@pytest.mark.slow
def test_an_unsure_model_gets_an_int8_file_with_some_layers_in_float(tmp_path, capfd):
    """MobileNetV2 trained 1 + 3 epochs from scratch on 32-px digits (72 % accurate): plain int8 changes some of
    its answers; with the bar set above what plain int8 reaches, the selective model reaches it with some layers,
    not all, in float. How many depends on the model: 22, 1 and 51 of 69 for seeds 0, 1 and 2 of this training here
    (seed 0 needed 1 before the optimizer's update became TensorFlow's fused kernel, which rounds differently and so
    trains a different model; benchmarks/RESULTS.md, issue 18). That the search takes the fewest worst layers that
    reach the bar is the fake-search tests' job."""
    import tlkeras
    from tlkeras.data.images import prepare_image
    from tlkeras.demo import load_digits

    images, labels = load_digits()
    keep = labels >= 5
    x, y = np.repeat(images[keep][..., None], 3, -1), labels[keep] - 5
    result = tlkeras.build_and_finetune(
        (x, y), backbone="mobilenetv2", weights=None, backbone_options={"alpha": 0.35}, image_size=32,
        batch_size=32, seed=0, stage1={"epochs": 1, "learning_rate": 0.01},
        stage2={"epochs": 3, "unfreeze": "all", "train_bn": True, "learning_rate": 0.002, "layer_decay": None,
                "schedule": "constant", "warmup_epochs": 0},
        export=False, report=False, tensorboard=False, output_dir=str(tmp_path / "run"), verbose=0)
    pixels = np.stack([prepare_image(image, (32, 32)).numpy() for image in x])
    rows = np.random.default_rng(0).permutation(len(x))
    check = pixels[rows[:200]]
    calibration = pixels[rows[200:]][balanced_sample(y[rows[200:]], 100)]
    capfd.readouterr()  # what TFLite's C++ side prints from here on reaches the terminal unless tlkeras hides it
    plain = tflite.measure(result.model, tflite.TFLiteClassifier(tflite.convert(result.model, "int8", calibration)),
                           check, "int8", 0.97).top1_agreement
    assert plain < 0.99  # an unsure model: plain int8 changes some answers (0.95-0.97 measured here)
    bar = round(plain + 0.005, 4)  # above what plain int8 reaches, so the search must find float layers
    out = tflite.export_tflite(result.model, str(tmp_path / "tflite"), [str(c) for c in range(5, 10)],
                               kinds=["int8"], check_pixels=check, representative=calibration,
                               thresholds={"int8": bar})["int8"]
    chosen = out.selective
    assert chosen["plain_int8_agreement"] == plain < bar <= out.top1_agreement  # plain fell short, selective passed
    assert 0 < len(chosen["float_layers"]) < chosen["layers_measured"]  # all in float is refused, not a pass
    assert chosen["size_bytes"] > chosen["plain_int8_size_bytes"]  # float layers cost bytes, and it says so
    with open(tmp_path / "tflite" / "parity.json") as f:
        assert json.load(f)["int8"]["selective"]["float_layers"] == chosen["float_layers"]
    path = str(tmp_path / "tflite" / tflite.FILES["int8"])
    classifier = tflite.TFLiteClassifier(path)
    assert classifier.input["dtype"] == np.uint8 and classifier.output["dtype"] == np.uint8  # int8 at its edges
    again = tflite.measure(result.model, classifier, check, "int8", bar)  # the file written is the one measured
    assert again.top1_agreement == out.top1_agreement and again.max_abs_diff == out.max_abs_diff
    assert os.path.getsize(path) == chosen["size_bytes"]
    printed = capfd.readouterr().err  # (issue 37) one XNNPACK line per interpreter, one quantiser line per step
    assert "XNNPACK" not in printed and "fully_quantize" not in printed, printed[-2000:]


@pytest.mark.slow
def test_predict_from_every_format_answers_as_the_saved_model_within_the_recorded_agreement(
        trained_run, image_folder, tmp_path, monkeypatch):
    """Every file format, exported and then used through `tlkeras predict` on the run's images: its top-1 answers
    are the SavedModel's on at least the share of images its parity.json recorded (less one image of slack: the
    images here are not the validation images the parity was measured on). The int8 bar is lowered: whether int8
    reaches 97 % on this nearly untrained model's 6 validation images depends on the machine's float kernels (it
    did on CI's, not on a 2-core x86_64 here); reaching it is the unsure-model test's job, this one checks predict.
    So is float16's bar (99 %): this model's random backbone is so sensitive that float16 weights moved one of its
    6 answers (max |Δp| 0.18) after a change of the order stage 1's batches came in; the bar is lowered the same way."""
    import shutil

    from click.testing import CliRunner

    from tlkeras import cli

    monkeypatch.setitem(tflite.THRESHOLDS, "float16", 0.01)

    run = str(tmp_path / "run")
    shutil.copytree(trained_run.run_dir, run)
    exported = CliRunner().invoke(cli.main, ["export", run, "--format", "tflite,tflite-float16,tflite-int8,onnx",
                                                   "--int8-min-agreement", "0.01"])
    assert exported.exit_code == 0, exported.output
    files = exported.stdout.split()
    assert [os.path.basename(f) for f in files] == ["model_float32.tflite", "model_float16.tflite",
                                                    "model_int8.tflite", "model.onnx"]

    def answers(path):
        result = CliRunner().invoke(cli.main, ["predict", path, image_folder, "--format", "json", "--top-k", "1"])
        assert result.exit_code == 0, result.output
        return {row["path"]: row["classes"][0] for row in map(json.loads, result.stdout.splitlines())}

    served = answers(os.path.join(run, os.path.relpath(trained_run.export_dir, trained_run.run_dir)))
    assert len(served) == 24
    for path in files:
        with open(os.path.join(os.path.dirname(path), "parity.json")) as f:
            kind = {"model_float32.tflite": "float32", "model_float16.tflite": "float16",
                    "model_int8.tflite": "int8", "model.onnx": "onnx"}[os.path.basename(path)]
            recorded = json.load(f)[kind]["top1_agreement"]
        got = answers(path)
        agreement = np.mean([got[p] == served[p] for p in served])
        assert agreement >= recorded - 1 / len(served), (path, agreement, recorded)
