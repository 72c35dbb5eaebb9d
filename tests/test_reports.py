"""Issue 7: metrics computed by hand, the pictures and report of a run, run.json, TensorBoard, determinism."""

import base64
import json
import os
import re
import struct

import numpy as np
import pytest
import tensorflow as tf

import tlkeras
from tlkeras import report
from tlkeras.metrics import average_precision, classification_metrics, expected_calibration_error, roc_auc

from conftest import TINY, write_image_folder

# Six images, three classes. Predictions: 0->0 (0.7), 0->1 (0.5), 1->1 (0.8), 1->1 (0.6), 2->0 (0.4), 2->2 (0.9)
PROBS = np.array([
    [0.7, 0.2, 0.1],
    [0.3, 0.5, 0.2],
    [0.1, 0.8, 0.1],
    [0.2, 0.6, 0.2],
    [0.4, 0.3, 0.3],
    [0.05, 0.05, 0.9],
])
LABELS = np.array([0, 0, 1, 1, 2, 2])
NAMES = ["a", "b", "c"]


def test_multiclass_metrics_match_a_hand_computation():
    m = classification_metrics(PROBS, LABELS, NAMES, top_k=2)
    assert m["count"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6, abs=1e-4)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # a: predicted twice (rows 0 and 4), right once; 2 true -> P 1/2, R 1/2, F1 1/2
    # b: predicted 3 times, right twice; 2 true -> P 2/3, R 1, F1 0.8
    # c: predicted once, right; 2 true -> P 1, R 1/2, F1 2/3
    assert m["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert m["per_class"]["b"] == {"precision": 0.6667, "recall": 1.0, "f1": 0.8, "support": 2}
    assert m["per_class"]["c"] == {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2}
    assert m["macro_avg"] == {"precision": pytest.approx((0.5 + 0.6667 + 1) / 3, abs=1e-4),
                              "recall": pytest.approx(2 / 3, abs=1e-4),
                              "f1": pytest.approx((0.5 + 0.8 + 0.6667) / 3, abs=1e-4)}
    assert m["weighted_avg"] == m["macro_avg"]  # equal supports
    # top-2: row 4 (true c) has c tied with b at 0.3 behind a; the stable order keeps b -> miss; the rest hit
    assert m["top_2_accuracy"] == pytest.approx(5 / 6, abs=1e-4)
    picked = [0.7, 0.3, 0.8, 0.6, 0.3, 0.9]
    assert m["loss"] == pytest.approx(-np.mean(np.log(picked)), abs=1e-4)


def test_expected_calibration_error_by_hand():
    # confidences 0.7, 0.5, 0.8, 0.6, 0.4, 0.9 fall in six different bins of width 1/15
    # |correct - confidence| per row: 0.3, 0.5, 0.2, 0.4, 0.4, 0.1 -> mean 1.9 / 6
    assert expected_calibration_error(PROBS, LABELS) == pytest.approx(1.9 / 6, abs=1e-4)
    # two rows in one bin: accuracy 1/2, mean confidence 0.95 -> 0.45
    assert expected_calibration_error(np.array([[0.95, 0.05], [0.95, 0.05]]), np.array([0, 1])) == pytest.approx(0.45)


def test_binary_roc_and_pr_auc_by_hand_with_ties():
    scores = np.array([0.9, 0.8, 0.8, 0.3, 0.2])
    positive = np.array([1, 1, 0, 0, 1])
    # pairs (pos, neg): 0.9 beats both; 0.8 ties 0.8 (1/2) and beats 0.3; 0.2 loses both -> 3.5 / 6
    assert roc_auc(scores, positive) == pytest.approx(3.5 / 6)
    # thresholds 0.9: P 1/1, R 1/3; 0.8: P 2/3, R 2/3; 0.3: P 2/4; 0.2: P 3/5, R 1
    assert average_precision(scores, positive) == pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 3 + 1 / 3 * 3 / 5)
    probs = np.stack([1 - scores, scores], axis=1)
    m = classification_metrics(probs, positive, ["no", "yes"])
    assert m["roc_auc"] == pytest.approx(3.5 / 6, abs=1e-4)
    assert m["pr_auc"] == pytest.approx(0.7556, abs=1e-4)
    assert "top_5_accuracy" not in m  # k >= classes says nothing


def test_bad_probability_shapes_are_named():
    with pytest.raises(ValueError, match=r"shape \(6, 3\); expected \(6, 2\)"):
        classification_metrics(PROBS, LABELS, ["a", "b"])


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])  # IHDR width, height


def test_a_run_writes_every_picture_and_a_self_contained_report(trained_run):
    run = trained_run.run_dir
    for name, min_w, min_h in [(report.CURVES_FILE, 600, 250), (report.CONFUSION_FILE, 300, 300),
                               (report.MISTAKES_FILE, 300, 150)]:
        path = os.path.join(run, name)
        width, height = _png_size(path)
        assert width >= min_w and height >= min_h, (name, width, height)
        assert os.path.getsize(path) > 5_000
    with open(os.path.join(run, report.REPORT_FILE), encoding="utf-8") as f:
        page = f.read()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 3  # embedded, not linked: the file stands alone
    for data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    for name in trained_run.class_names:
        assert f"<th>{name}</th>" in page
    assert f"<td>{trained_run.metrics['accuracy']}</td>" in page
    # the config once, as a table of its keys; run.json's facts, classes and times as tables, no raw JSON
    assert page.count("<th>backbone</th><td class='l'>mobilenetv2</td>") == 1
    assert page.count("<th>stage2.unfreeze</th>") == 1
    assert "<pre>" not in page and '"backbone":' not in page
    with open(os.path.join(run, "run.json"), encoding="utf-8") as f:
        record = json.load(f)
    assert f"<th>versions.tensorflow</th><td class='l'>{record['versions']['tensorflow']}</td>" in page
    assert f"<th>data.train.sha256</th><td class='l'>{record['data']['train']['sha256']}</td>" in page
    name = trained_run.class_names[0]
    counts = record["class_counts"]
    assert f"<tr><th>{name}</th><td>{counts['train'][name]}</td><td>{counts['val'][name]}</td></tr>" in page
    assert f"<tr><th>stage1</th><td>{record['seconds']['stage1']:.1f}</td></tr>" in page


def test_mistakes_grid_shows_the_most_confident_errors_first():
    probs = np.array([[0.6, 0.4], [0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    labels = np.array([1, 1, 1, 0])
    assert report.confident_mistakes(probs, labels).tolist() == [2, 3, 0]


def test_report_without_mistakes_still_writes_a_picture(tmp_path):
    path = report.plot_mistakes([], [], np.zeros((0, 2)), np.zeros(0, int), ["a", "b"], str(tmp_path / "m.png"))
    assert _png_size(path)[0] > 100


def test_run_json_has_every_field(trained_run, image_folder):
    with open(os.path.join(trained_run.run_dir, "run.json")) as f:
        record = json.load(f)
    assert set(record["versions"]) == {"python", "tlkeras", "tensorflow", "keras", "numpy"}
    assert record["versions"]["tensorflow"] == tf.__version__
    assert record["seed"] == 0 and record["config"]["seed"] == 0
    assert record["config"]["backbone"] == "mobilenetv2"
    assert record["class_names"] == trained_run.class_names
    assert sum(record["class_counts"]["train"].values()) + sum(record["class_counts"]["val"].values()) == 24
    assert record["data"]["train"]["kind"] == "files" and len(record["data"]["train"]["sha256"]) == 64
    assert record["data"]["train"]["files"] == sum(record["class_counts"]["train"].values())
    assert record["backbone"]["weights"].endswith(".weights.h5") and len(record["backbone"]["sha256"]) == 64
    assert {"data", "build", "stage1", "stage2", "evaluate", "export"} <= set(record["seconds"])
    assert record["devices"]["strategy"] and record["devices"]["replicas"] == 1
    assert record["export_dir"] == trained_run.export_dir
    assert record["caching"] and record["precision_policy"] == "float32"


def test_data_fingerprint_changes_with_a_file_and_not_with_the_folder_location(tmp_path):
    from tlkeras.data.datasets import load_examples
    from tlkeras.runrecord import fingerprint

    a = write_image_folder(tmp_path / "a", per_class=2)
    b = write_image_folder(tmp_path / "b", per_class=2)
    fa = fingerprint(load_examples(a, "data", None)[0], a)
    fb = fingerprint(load_examples(b, "data", None)[0], b)
    assert fa == fb  # same files, other place
    with open(os.path.join(b, "red", "000.png"), "ab") as f:
        f.write(b"\0")
    assert fingerprint(load_examples(b, "data", None)[0], b)["sha256"] != fa["sha256"]


def _scalars(folder, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(folder, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    events = acc.Tensors(tag) if tag in acc.Tags()["tensors"] else acc.Scalars(tag)
    return [(e.step, float(tf.make_ndarray(e.tensor_proto)) if hasattr(e, "tensor_proto") else e.value)
            for e in events]


def test_tensorboard_logs_both_stages_on_one_step_axis(trained_run):
    steps = os.path.join(trained_run.run_dir, "tensorboard", "steps")
    rates = _scalars(steps, "learning_rate")
    stages = _scalars(steps, "stage")
    assert [s for s, _ in rates] == sorted({s for s, _ in rates})  # one global step, increasing
    assert {v for _, v in stages} == {1.0, 2.0}
    first_stage2 = min(s for s, v in stages if v == 2.0)
    assert all(v == 1.0 for s, v in stages if s < first_stage2)
    # stage 1 at 1e-2, stage 2 at the default fraction of it
    assert {round(v, 8) for s, v in rates if s < first_stage2} == {0.01}
    assert all(v < 0.01 for s, v in rates if s >= first_stage2)
    # epoch scalars of both stages in one log: 3 epochs
    epochs = _scalars(os.path.join(trained_run.run_dir, "tensorboard", "validation"), "epoch_loss")
    assert sorted(s for s, _ in epochs) == [0, 1, 2]
    # the model's (conceptual) graph, which TensorBoard's Graphs tab draws
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.join(trained_run.run_dir, "tensorboard", "train"))
    acc.Reload()
    assert "keras" in acc.Tags()["tensors"]


@pytest.fixture
def restore_op_determinism():
    from tensorflow.python.framework import config

    yield
    config.disable_op_determinism()  # process-wide: keep it out of the other tests


def test_two_seeded_runs_give_identical_metrics(tmp_path, image_folder, backbone_weights, restore_op_determinism):
    metrics = []
    for i in range(2):
        result = tlkeras.build_and_finetune(
            image_folder, **TINY, weights=backbone_weights, batch_size=8, deterministic=True,
            stage1={"epochs": 2, "learning_rate": 1e-2}, stage2={"epochs": 1, "unfreeze": "blocks:1"},
            output_dir=str(tmp_path / f"run{i}"), export=False, report=False, tensorboard=False, verbose=0,
        )
        metrics.append(result.metrics)
        with open(os.path.join(result.run_dir, "run.json")) as f:
            assert json.load(f)["devices"]["op_determinism"] is True
    assert metrics[0] == metrics[1]
    assert not os.path.exists(os.path.join(tmp_path / "run0", "report.html"))
    assert not os.path.exists(os.path.join(tmp_path / "run0", "tensorboard"))


def test_the_report_names_the_restored_epoch_and_marks_it_on_the_curves(tmp_path):
    history = {"epoch": [1, 2, 3, 4], "stage": [1, 1, 2, 2], "loss": [1.0, 0.8, 0.6, 0.5],
               "val_loss": [0.9, 0.7, 0.8, 0.9], "accuracy": [0.5, 0.6, 0.7, 0.8],
               "val_accuracy": [0.5, 0.9, 0.6, 0.6]}
    metrics = {**classification_metrics(PROBS, LABELS, NAMES), "epoch": 2, "restored_best": True}
    for name, m in (("restored", metrics), ("last", {**metrics, "epoch": 4, "restored_best": False})):
        os.makedirs(tmp_path / name)
        report.write_report(str(tmp_path / name), history=history, metrics=m, probabilities=PROBS, labels=LABELS,
                            class_names=NAMES, images_of=None, config={})
    page = (tmp_path / "restored" / "report.html").read_text()
    assert "<tr><th>epoch</th><td>2</td></tr>" in page and "<tr><th>restored_best</th><td>True</td></tr>" in page
    # the curves differ only by the marked epoch
    curves = [(tmp_path / name / "training_curves.png").read_bytes() for name in ("restored", "last")]
    assert curves[0] != curves[1]
    os.makedirs(tmp_path / "again")
    report.plot_training_curves(history, str(tmp_path / "again" / "c.png"), evaluated_epoch=4)
    assert (tmp_path / "again" / "c.png").read_bytes() == curves[1]  # the last epoch: nothing marked


def test_the_report_shows_a_blank_value_quoted_leaves_the_status_to_run_json_and_does_not_magnify_a_flat_curve(
        tmp_path):
    history = {"epoch": [1, 2, 3], "stage": [1, 1, 2], "loss": [0.5, 0.5002, 0.5001], "accuracy": [0.5, 0.5, 0.5]}
    record = {"status": "trained", "tlkeras_version": "0"}
    report.write_report(str(tmp_path), history=history, metrics=classification_metrics(PROBS, LABELS, NAMES),
                        probabilities=PROBS, labels=LABELS, class_names=NAMES, images_of=None,
                        config={"label_separator": " "}, record=record)
    page = (tmp_path / "report.html").read_text()
    assert "<th>label_separator</th><td class='l'>&quot; &quot;</td>" in page  # was a blank cell
    assert "<th>status</th>" not in page  # the export comes after the report: run.json says when it is complete
    fig = report._figure(3, 3)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([1, 2, 3], history["loss"])
    report._not_zoomed_in(ax, 0.0)
    low, high = ax.get_ylim()
    assert high - low >= report.MIN_SPAN and low >= 0.0  # matplotlib alone zooms to 0.0002 + margins
