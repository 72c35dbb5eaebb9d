"""Multi-label classification, the second Task, through the same roles as single-label: data (CSV of
image paths, CSV of texts, multi-hot arrays and tf.data), the iterative split, the head and loss,
thresholds, metrics, the export, predict and evaluate - and the shared contract (tests/contract.py)."""

import csv
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

import contract
import tlkeras
import tlkeras.errors
from conftest import COLORS, TINY, TEXT_WORDS
from tlkeras import cli
from tlkeras.data.datasets import make_datasets
from tlkeras.config import FinetuneConfig
from tlkeras.errors import DataError
from tlkeras.model import model_info
from tlkeras.tasks import get_task
from tlkeras.tasks.losses import MultiLabelCrossentropy
from tlkeras.tasks.multi_label import best_f1_threshold, iterative_stratification

NAMES = sorted(COLORS)  # blue, green, red


def two_colour_image(rng, colours, size=32):
    """Stripes two pixels high of each of its colours in turn (grey for no colour), with noise."""
    fill = [COLORS[c] for c in colours] or [(128, 128, 128)]
    image = np.empty((size, size, 3))
    for row in range(size):
        image[row] = fill[(row // 2) % len(fill)]
    return np.clip(image + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8)


LABEL_SETS = [["red"], ["green"], ["blue"], ["red", "green"], ["green", "blue"], ["red", "blue"], []]


def write_multilabel_csv(root, per_set=8, seed=0) -> str:
    """photos/<i>.png and labels.csv (image,label) with cells like "red green" (and empty ones)."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "photos"), exist_ok=True)
    rows = []
    for i in range(per_set * len(LABEL_SETS)):
        labels = LABEL_SETS[i % len(LABEL_SETS)]
        name = f"photos/{i:03d}.png"
        with open(os.path.join(root, name), "wb") as f:
            f.write(tf.io.encode_png(two_colour_image(rng, labels)).numpy())
        rows.append((name, " ".join(labels)))
    path = os.path.join(root, "labels.csv")
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "label"])
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def multilabel_csv(tmp_path_factory):
    return write_multilabel_csv(str(tmp_path_factory.mktemp("multilabel")))


RUN = {**TINY, "batch_size": 8, "report": True, "tensorboard": False, "verbose": 0}


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory, multilabel_csv, backbone_weights):
    keras.utils.set_random_seed(0)
    return tlkeras.build_and_finetune(
        multilabel_csv, **RUN, weights=backbone_weights, stage1={"epochs": 8, "learning_rate": 0.005},
        stage2={"epochs": 2, "unfreeze": "blocks:1"}, output_dir=str(tmp_path_factory.mktemp("ml") / "run"),
        restore_best=False,  # the contract checks what stage 2 trained: keep its last epoch (see test_edges)
    )


def initial_backbone(weights):
    model = tlkeras.build_model(TINY["backbone"], 3, image_size=32, weights=weights,
                                backbone_options=TINY["backbone_options"], task="multi_label")
    return contract.backbone_arrays(model)


def val_images(run, count=8):
    files = sorted(os.listdir(os.path.join(os.path.dirname(run.config.data), "photos")))[:count]
    return [os.path.join(os.path.dirname(run.config.data), "photos", f) for f in files]


# === The shared contract, multi-label images ===


def test_auto_task_reads_the_csv_as_multi_label_and_builds_one_sigmoid_per_class(multilabel_run, caplog):
    info = model_info(multilabel_run.model)
    assert (info.task, info.inputs, info.class_names) == ("multi_label", "image", NAMES)
    output = multilabel_run.model.get_layer("predictions")
    assert output.units == 3 and output.activation.__name__ == "sigmoid" and output.dtype_policy.name == "float32"
    assert isinstance(info.task_role.loss(3), MultiLabelCrossentropy)
    assert "binary_accuracy" in multilabel_run.history and "accuracy" not in multilabel_run.history
    # 56 rows (the grey ones, with no label, are negatives): each colour is in 24, a fifth of them validates
    counts = json.load(open(os.path.join(multilabel_run.run_dir, "run.json"), encoding="utf-8"))["class_counts"]
    for name in NAMES:
        assert counts["train"][name] + counts["val"][name] == 24 and counts["val"][name] in (4, 5), counts
    assert 10 <= multilabel_run.metrics["count"] <= 12


def test_stage_1_leaves_the_backbone_bit_identical(tmp_path, multilabel_csv, backbone_weights):
    result = tlkeras.build_and_finetune(multilabel_csv, **RUN, weights=backbone_weights, stage1={"epochs": 2},
                                        stage2={"epochs": 0}, export=False, output_dir=str(tmp_path / "run"))
    contract.check_stage1_leaves_backbone(initial_backbone(backbone_weights), result)


def test_stage_2_changes_what_unfreeze_allows_and_keeps_bn_statistics(multilabel_run, backbone_weights):
    contract.check_stage2_changes_what_unfreeze_allows(initial_backbone(backbone_weights), multilabel_run)


def test_model_keras_reloads_with_its_thresholds_and_predicts_identically(multilabel_run):
    pixels = np.random.default_rng(3).uniform(0, 255, (5, 32, 32, 3)).astype("float32")
    contract.check_reload_predicts_identically(multilabel_run, pixels)
    thresholds = model_info(multilabel_run.model).decision["thresholds"]
    assert len(thresholds) == 3 and all(0 < t < 1 for t in thresholds)
    assert multilabel_run.metrics["thresholds"] == [round(t, 4) for t in thresholds]


def test_the_export_returns_the_labels_above_the_thresholds(multilabel_run):
    from tlkeras.data.images import load_image

    paths = val_images(multilabel_run)
    blobs = [open(p, "rb").read() for p in paths]
    pixels = np.stack([load_image(p, (32, 32)).numpy() for p in paths])
    contract.check_export_answers_as_the_model(multilabel_run, {"image_bytes": tf.constant(blobs)}, pixels)


def test_the_model_learned_the_colours(multilabel_run):
    m = multilabel_run.metrics
    # a constant model scores micro-F1 ~0.6 (every label on) and mAP ~0.43 (the labels' prevalence)
    assert m["micro_f1"] >= 0.7 and m["mean_average_precision"] >= 0.65, m
    assert set(m["per_class"]) == set(NAMES) and {"average_precision", "roc_auc", "threshold"} <= set(
        m["per_class"]["red"])
    assert 0 <= m["hamming_loss"] <= 1 and 0 <= m["subset_accuracy"] <= 1


def test_report_has_precision_recall_curves_and_the_thresholds(multilabel_run):
    run_dir = multilabel_run.run_dir
    assert os.path.isfile(os.path.join(run_dir, "precision_recall_curves.png"))
    assert not os.path.exists(os.path.join(run_dir, "confusion_matrix.png"))
    page = open(os.path.join(run_dir, "report.html"), encoding="utf-8").read()
    assert "threshold" in page and "micro_f1" in page and "precision recall curves" in page


def test_predict_prints_the_labels_and_json_gives_every_probability(multilabel_run):
    runner = CliRunner()
    paths = val_images(multilabel_run, 3)
    table = runner.invoke(cli.main, ["predict", multilabel_run.export_dir, *paths])
    assert table.exit_code == 0, table.output
    lines = table.output.strip().splitlines()
    assert lines[0].split()[-1] == "labels" and len(lines) == 4
    rows = [json.loads(line) for line in
            runner.invoke(cli.main, ["predict", multilabel_run.export_dir, *paths, "--format", "json"]).output.splitlines()]
    thresholds = dict(zip(NAMES, model_info(multilabel_run.model).decision["thresholds"]))
    for row, line in zip(rows, lines[1:]):
        assert set(row["probabilities"]) == set(NAMES)
        assert row["labels"] == sorted([n for n, p in row["probabilities"].items() if p >= thresholds[n]],
                                       key=lambda n: -row["probabilities"][n])
        for name in row["labels"]:
            assert f"{name} (" in line
    out = runner.invoke(cli.main, ["predict", multilabel_run.export_dir, *paths, "--format", "csv"]).output
    assert out.splitlines()[0] == "path,labels," + ",".join(NAMES)


def test_evaluate_gives_the_same_metrics_from_the_run_and_from_its_export(multilabel_run):
    from tlkeras.evaluate import evaluate_run

    from_run = evaluate_run(multilabel_run.run_dir)
    from_export = evaluate_run(multilabel_run.export_dir)
    for key in ("micro_f1", "subset_accuracy", "hamming_loss", "mean_average_precision"):
        assert from_run[key] == multilabel_run.metrics[key] == pytest.approx(from_export[key], abs=1e-4), key
    out = CliRunner().invoke(cli.main, ["evaluate", multilabel_run.run_dir])
    assert out.exit_code == 0 and "micro-F1" in out.output and "Hamming loss" in out.output


def test_tflite_parity_is_per_label_agreement_at_the_thresholds(multilabel_run, caplog):
    from tlkeras.export import export_run

    with caplog.at_level("INFO", logger="tlkeras"):
        out = export_run(multilabel_run.run_dir, formats=["tflite"])
    assert "(each label at its threshold)" in caplog.text and "top-1" not in caplog.text  # the log says what agreed
    parity = json.load(open(os.path.join(os.path.dirname(out["tflite"]), "parity.json"), encoding="utf-8"))
    assert parity["float32"]["measure"] == "each label at its threshold"
    assert parity["float32"]["top1_agreement"] >= 0.995
    card = json.load(open(os.path.join(os.path.dirname(out["tflite"]), "model_card.json"), encoding="utf-8"))
    assert card["task_name"] == "multi_label" and card["decision"]["thresholds"]


# === Multi-label texts ===


def text_label_rows(count=48, seed=0):
    """(text, labels) where a text mentions warm words, cool words, both, or neither."""
    rng = np.random.default_rng(seed)
    kinds = [["warm"], ["cool"], ["cool", "warm"], []]
    rows = []
    for i in range(count):
        labels = kinds[i % 4]
        words = [w for label in labels for w in rng.choice(TEXT_WORDS[label], 2)] or ["nothing"]
        rows.append((" ".join(words) + " and the rest", "|".join(labels)))
    return rows


def test_a_multi_label_text_run_keeps_the_contract(tmp_path, hub_text_module):
    from test_hub import changed, module_values
    from tlkeras import freezing

    path = str(tmp_path / "texts.tsv")
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["text", "tags"])
        writer.writerows(text_label_rows())
    result = tlkeras.build_and_finetune(
        path, backbone=f"hub:{hub_text_module}", label_column="tags", label_separator="|", batch_size=8,
        stage1={"epochs": 8, "learning_rate": 0.05}, stage2={"epochs": 1, "unfreeze": 2}, report=False,
        tensorboard=False, verbose=0, output_dir=str(tmp_path / "run"),
    )
    info = model_info(result.model)
    assert (info.task, info.inputs, info.class_names) == ("multi_label", "text", ["cool", "warm"])
    assert changed(module_values(hub_text_module), module_values(freezing.hub_module(result.model))) == {
        "dense/kernel", "dense/bias"}
    texts = ["red fire and the rest", "blue sky and the rest", "red sea", "nothing", ""]
    contract.check_reload_predicts_identically(result, tf.constant(texts))
    served = contract.check_export_answers_as_the_model(result, {"text": tf.constant(texts)}, tf.constant(texts))
    assert served["labels"].shape == (5, 2)
    assert result.metrics["micro_f1"] >= 0.7, result.metrics
    from tlkeras.predict import predict

    rows = predict(result.export_dir, texts[:2]).rows
    assert rows[0]["text"] == texts[0] and "warm" in rows[0]["labels"]


# === Data sources, split, weights, thresholds ===


def test_arrays_with_a_multi_hot_matrix_and_tf_data_of_multi_hot_rows():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (24, 8, 8, 3)).astype("uint8")
    y = (rng.uniform(size=(24, 3)) > 0.5).astype("float32")
    y[0] = [1, 1, 0]  # at least one row with two labels
    cfg = FinetuneConfig.from_dict({"class_names": ["a", "b", "c"], "batch_size": 4})
    bundle = make_datasets(cfg, (16, 16), data=(x, y))
    assert bundle.task.name == "multi_label" and bundle.class_names == ["a", "b", "c"]
    _, labels = next(iter(bundle.train))
    assert labels.dtype == tf.float32 and labels.shape == (4, 3)
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    from_ds = make_datasets(cfg, (16, 16), data=ds)
    assert from_ds.task.name == "multi_label"
    np.testing.assert_array_equal(np.sort(from_ds.train_examples.labels, axis=0), np.sort(
        bundle.train_examples.labels, axis=0))


def test_a_one_hot_matrix_under_auto_is_single_label():
    x = np.zeros((12, 8, 8, 3), "uint8")
    y = np.eye(3, dtype="float32")[np.arange(12) % 3]
    bundle = make_datasets(FinetuneConfig.from_dict({"batch_size": 4}), (16, 16), data=(x, y))
    assert bundle.task.name == "single_label" and bundle.train_examples.labels.dtype == np.int64


def test_a_split_with_rare_labels_trains_every_label_and_keeps_validation_to_its_share(caplog):
    """1000 labels over 120 rows (3 each): every label with an example has one in training, validation stays within
    the asked 20 %, and the log says how many labels have no validation example and what to do."""
    import logging

    rng = np.random.default_rng(0)
    y = np.zeros((120, 1000), bool)
    for row in range(120):
        y[row, rng.choice(1000, 3, replace=False)] = True
    caplog.set_level(logging.WARNING, logger="tlkeras")
    train, val = iterative_stratification(y, 0.2, seed=0)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(120))
    assert len(val) <= 24
    assert (y[train].sum(axis=0) > 0).sum() == (y.sum(axis=0) > 0).sum()  # no label left without a training row
    assert "labels have no validation example" in caplog.text and "give each label a few more examples" in caplog.text
    common = np.zeros((100, 3), bool)
    common[np.arange(100), np.arange(100) % 3] = True  # plenty of each label: the share is kept, nothing logged
    caplog.clear()
    train, val = iterative_stratification(common, 0.2, seed=0)
    assert len(val) == 20 and not caplog.text


def test_iterative_stratification_keeps_every_labels_share_and_is_seeded():
    rng = np.random.default_rng(1)
    y = rng.uniform(size=(400, 6)) < np.array([0.5, 0.3, 0.1, 0.05, 0.6, 0.02])
    train, val = iterative_stratification(y, 0.2, seed=3)
    assert len(set(train) | set(val)) == 400 and not set(train) & set(val)
    assert abs(len(val) - 80) <= 2
    for c in range(6):
        total = y[:, c].sum()
        assert abs(y[val, c].sum() - 0.2 * total) <= 1.0, (c, y[val, c].sum(), total)
    again = iterative_stratification(y, 0.2, seed=3)
    np.testing.assert_array_equal(again[1], val)
    assert not np.array_equal(iterative_stratification(y, 0.2, seed=4)[1], val)
    # a random split of the same size misses the rare labels' shares by far more
    random_val = np.random.default_rng(3).permutation(400)[:80]
    assert sum(abs(y[random_val, c].sum() - 0.2 * y[:, c].sum()) for c in range(6)) > sum(
        abs(y[val, c].sum() - 0.2 * y[:, c].sum()) for c in range(6))


def test_balanced_class_weight_weighs_each_labels_positives_in_the_loss():
    y = np.array([[1, 0], [1, 1], [0, 0], [1, 0]], "float32")
    task = get_task("multi_label")
    weights = task.class_weight("balanced", y, ["a", "b"])
    assert weights == {0: pytest.approx(1 / 3), 1: pytest.approx(3.0)}
    assert task.fit_class_weight(weights) is None  # fit's class_weight is for one class per example
    loss = task.loss(2, 0.0, weights)
    p = np.array([[0.8, 0.3]], "float32")
    expected = -(1 / 3 * np.log(0.8) + 3.0 * 0 + np.log(1 - 0.3) * 0) / 2 - np.log(1 - 0.3) / 2
    got = float(loss(np.array([[1, 0]], "float32"), p))
    assert got == pytest.approx(expected, rel=1e-5)
    smoothed = get_task("multi_label").loss(2, 0.2)
    target = np.array([[0.9, 0.1]])
    by_hand = -(target * np.log(p) + (1 - target) * np.log(1 - p)).mean()
    assert float(smoothed(np.array([[1, 0]], "float32"), p)) == pytest.approx(by_hand, rel=1e-5)


def test_thresholds_maximise_f1_per_class_or_globally_or_are_fixed():
    p = np.array([[0.9, 0.2], [0.6, 0.45], [0.4, 0.1], [0.1, 0.55]])
    y = np.array([[1, 0], [1, 1], [0, 0], [0, 1]])
    task = get_task("multi_label")
    per_class = task.choose_decision(p, y, "per_class")["thresholds"]
    assert per_class == [0.5, 0.325]  # class 0: between 0.6 and 0.4; class 1: 0.55 and 0.45 in, 0.2 out
    assert task.metrics(p, y, ["a", "b"], decision={"thresholds": per_class})["micro_f1"] == 1.0
    single = task.choose_decision(p, y, "global")["thresholds"]
    assert single[0] == single[1]
    assert task.choose_decision(p, y, 0.3)["thresholds"] == [0.3, 0.3]
    assert best_f1_threshold(np.array([0.2, 0.3]), np.array([0, 0])) == 0.5  # no positives: the default
    # a class with no positive validation example keeps the default, and the decision says so by name
    unseen = task.choose_decision(p, np.array([[1, 0], [1, 0], [0, 0], [0, 0]]), "per_class", ["a", "b"])
    assert unseen["thresholds"][1] == 0.5 and unseen["defaulted"] == [1]
    assert unseen["chosen"] == ("per class, maximising F1 on the validation split; 0.5 for the 1 class(es) with no "
                                "validation example (b)")
    assert "defaulted" not in task.choose_decision(p, y, "per_class", ["a", "b"])


def test_multi_label_training_under_the_own_loop_matches_fit():
    """The step loop (tf.distribute's custom loop) asks the Task for the loss and the right answers."""
    from tlkeras.steploop import fit_loop

    task = get_task("multi_label")
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = np.stack([x[:, 0] > 0, x[:, 1] > 0, x[:, 0] + x[:, 1] > 1], axis=1).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)

    def model():
        keras.utils.set_random_seed(0)
        m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="sigmoid")])
        m.compile(optimizer=keras.optimizers.SGD(0.5), loss=task.loss(3), metrics=task.training_metrics())
        return m

    fitted = model().fit(ds, epochs=3, verbose=0, shuffle=False).history
    looped = fit_loop(model(), ds, epochs=3, task=task).history
    np.testing.assert_allclose(looped["loss"], fitted["loss"], rtol=1e-5)
    np.testing.assert_allclose(looped["binary_accuracy"], fitted["binary_accuracy"], atol=1e-6)


def test_the_task_auto_line_is_logged_once(multilabel_csv, caplog):
    with caplog.at_level("INFO", logger="tlkeras"):
        bundle = make_datasets(FinetuneConfig.from_dict({"val_split": 0.25}), (16, 16), data=multilabel_csv)
    assert bundle.task.name == "multi_label"
    assert caplog.text.count("task auto: multi-label") == 1, caplog.text


def test_errors_name_the_bad_value(tmp_path, multilabel_csv):
    with pytest.raises(DataError, match="has no column 'tags'.*label_column"):
        make_datasets(FinetuneConfig.from_dict({"label_column": "tags"}), (16, 16), data=multilabel_csv)
    with pytest.raises(DataError, match="example .* has 2 labels, but task single_label takes exactly one"):
        make_datasets(FinetuneConfig.from_dict({"task": "single_label", "label_separator": " "}), (16, 16),
                      data=(np.zeros((2, 4, 4, 3)), [["a", "b"], ["a"]]))
    with pytest.raises(Exception, match="task: 'multilabel' is not valid.*Did you mean 'multi_label'"):
        FinetuneConfig.from_dict({"task": "multilabel"})
    with pytest.raises(Exception, match="threshold: 1.5 is not valid"):
        FinetuneConfig.from_dict({"threshold": 1.5})


def test_a_missing_image_in_the_csv_is_skipped_with_its_reason(tmp_path):
    path = write_multilabel_csv(str(tmp_path), per_set=2)
    with open(path, "a", encoding="utf-8") as f:
        f.write("photos/missing.png,red\n")
    bundle = make_datasets(FinetuneConfig.from_dict({"batch_size": 4}), (16, 16), data=path)
    assert any(p.endswith("missing.png") and "no such file" in why for p, why in bundle.skipped)
    assert bundle.task.name == "multi_label" and bundle.train_count + bundle.val_count == 2 * len(LABEL_SETS)


# === Everything else works for multi-label as for single-label ===


@pytest.fixture(scope="module")
def small_multilabel_csv(tmp_path_factory):
    return write_multilabel_csv(str(tmp_path_factory.mktemp("ml-small")), per_set=4)  # 28 rows, 22 train


def test_mirrored_multi_label_run_matches_one_device_with_gradual_unfreezing(tmp_path, small_multilabel_csv,
                                                                              backbone_weights):
    """The own tf.distribute loop (2 logical CPUs) on the multi-label loss, gradual unfreezing and
    layer-wise rates: the same global batch (one batch per epoch) as on one device, the same run."""
    options = {**RUN, "weights": backbone_weights, "data": small_multilabel_csv, "export": False, "report": False,
               "head": {"dropout": 0.0}, "stage1": {"epochs": 2, "learning_rate": 0.005},
               "stage2": {"epochs": 2, "unfreeze": "blocks:2", "gradual_unfreeze": 1}}
    one = tlkeras.build_and_finetune(**{**options, "batch_size": 32}, strategy="default", output_dir=str(tmp_path / "a"))
    two = tlkeras.build_and_finetune(**{**options, "batch_size": 16}, strategy="mirrored", output_dir=str(tmp_path / "b"))
    assert two.history["epoch"] == [1, 2, 3, 4] and "binary_accuracy" in two.history
    np.testing.assert_allclose(two.history["val_loss"], one.history["val_loss"], rtol=1e-4)
    np.testing.assert_allclose(two.history["binary_accuracy"], one.history["binary_accuracy"], atol=1e-6)
    for x, y in zip(one.model.get_weights(), two.model.get_weights()):
        np.testing.assert_allclose(y, x, atol=1e-4)


def test_an_interrupted_multi_label_run_resumes_to_the_same_run(tmp_path, small_multilabel_csv, backbone_weights):
    from conftest import CtrlC

    options = {**RUN, "weights": backbone_weights, "data": small_multilabel_csv, "batch_size": 32, "export": False,
               "report": False, "head": {"dropout": 0.0}, "class_weight": "balanced",
               "stage1": {"epochs": 2, "learning_rate": 0.005}, "stage2": {"epochs": 2, "unfreeze": "blocks:1"}}
    whole = tlkeras.build_and_finetune(**options, output_dir=str(tmp_path / "whole"))
    with pytest.raises(tlkeras.errors.Interrupted, match=r"3 finished epoch\(s\) are saved"):
        tlkeras.build_and_finetune(**options, output_dir=str(tmp_path / "cut"), callbacks=[CtrlC((2, 4))])
    resumed = tlkeras.build_and_finetune(**options, output_dir=str(tmp_path / "cut"), resume=True)
    assert resumed.history["epoch"] == [1, 2, 3, 4] and resumed.history["stage"] == [1, 1, 2, 2]
    np.testing.assert_allclose(resumed.history["loss"], whole.history["loss"], rtol=1e-4)
    assert model_info(resumed.model).decision == model_info(whole.model).decision


def test_mixed_precision_and_the_lr_finder_on_a_multi_label_run(tmp_path, small_multilabel_csv, backbone_weights):
    result = tlkeras.build_and_finetune(small_multilabel_csv, **{**RUN, "report": False}, weights=backbone_weights,
                                        mixed_precision="mixed_bfloat16", stage1={"epochs": 1},
                                        stage2={"epochs": 1, "unfreeze": "blocks:1"}, output_dir=str(tmp_path / "mp"))
    assert result.model.get_layer("predictions").compute_dtype == "float32"
    assert np.isfinite(result.history["loss"]).all() and os.path.isfile(
        os.path.join(result.export_dir, "saved_model.pb"))  # the export check (1e-5) passed
    found = tlkeras.find_learning_rate(small_multilabel_csv, **{k: v for k, v in RUN.items() if k not in (
                                           "verbose", "report", "tensorboard")},
                                       weights=backbone_weights, stage=1, steps=20, min_lr=1e-5, max_lr=1.0,
                                       output=str(tmp_path / "lr.png"))
    assert 1e-5 <= found.suggestion <= 1.0 and os.path.isfile(found.plot)
    # the range test trained the head on multi-hot labels (a single-label loss would not take them) and the
    # loss moved as the rate swept up
    assert np.isfinite(found.losses).all() and max(found.losses) - min(found.losses) > 0.01, found.losses
