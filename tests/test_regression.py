"""task: regression - numbers as targets, standardised on the training split, answered in the user's units."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tlkeras
from conftest import save_colour_backbone
from tlkeras.errors import ConfigError, DataError
from tlkeras.model import model_info
from tlkeras.tasks import get_task
from tlkeras.tasks.losses import StandardisedLoss

RUN = {"batch_size": 16, "report": False, "tensorboard": False, "verbose": 0}


def brightness_images(count: int, seed: int = 0):
    """(images [N, 32, 32, 3] float32, level [N]): noise scaled by a level in [0.1, 1] - the targets are functions of
    the level, which the colour backbone's mean colour shows."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(0.1, 1.0, count)
    images = rng.uniform(120, 255, (count, 32, 32, 3)) * level[:, None, None, None]
    return images.astype("float32"), level


def write_regression_csv(folder: str, count: int = 40) -> str:
    """folder/photos.csv: image, age (20 + 60 x level) and score (5 - 3 x level), with the PNGs beside it."""
    images, level = brightness_images(count)
    rows = ["image,age,score"]
    for i, (image, value) in enumerate(zip(images, level)):
        name = f"{i:03d}.png"
        with open(os.path.join(folder, name), "wb") as f:
            f.write(tf.io.encode_png(image.astype(np.uint8)).numpy())
        rows.append(f"{name},{20 + 60 * value:.3f},{5 - 3 * value:.4f}")
    path = os.path.join(folder, "photos.csv")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def colour_backbone(tmp_path_factory) -> str:
    return save_colour_backbone(str(tmp_path_factory.mktemp("colour") / "colour.keras"))


@pytest.fixture(scope="module")
def regression_csv(tmp_path_factory) -> str:
    return write_regression_csv(str(tmp_path_factory.mktemp("regression")))


@pytest.fixture(scope="module")
def two_targets(tmp_path_factory, regression_csv, colour_backbone):
    """One run of two targets from the CSV (auto: several label columns make a regression). No head dropout: on the
    colour backbone's 4 features it pulls the values towards the mean (R2 0.86 with 0.2, 0.99 without)."""
    return tlkeras.build_and_finetune(regression_csv, backbone=colour_backbone, label_column=["age", "score"],
                                      head={"dropout": 0.0}, stage1={"epochs": 25, "learning_rate": 0.05},
                                      stage2={"epochs": 2},
                                      output_dir=str(tmp_path_factory.mktemp("run") / "two"), **RUN)


def test_a_known_function_of_the_images_is_learned_and_answered_in_the_targets_units(two_targets, regression_csv):
    result = two_targets
    info = model_info(result.model)
    assert info.task == "regression" and result.class_names == ["age", "score"]
    assert result.metrics["r2"] >= 0.95, result.metrics  # the targets are linear in what the backbone sees
    for name, low, high in (("age", 20, 80), ("score", 2, 5)):
        assert result.metrics["per_target"][name]["r2"] >= 0.95
        assert result.metrics["per_target"][name]["mae"] < 0.05 * (high - low)
    # the standardisation was fixed on the training targets and is kept with the model
    rows = [line.split(",") for line in open(regression_csv, encoding="utf-8").read().split()[1:]]
    ages = np.array([float(r[1]) for r in rows])
    assert 0.5 * ages.std() < info.task_options["std"][0] < 1.5 * ages.std()
    assert abs(info.task_options["mean"][0] - ages.mean()) < 0.5 * ages.std()
    assert info.task_options["loss"] == "huber"
    # the export answers in years and points, as the model does
    folder = os.path.dirname(regression_csv)
    blobs = [open(os.path.join(folder, r[0]), "rb").read() for r in rows[:6]]
    served = tf.saved_model.load(result.export_dir).signatures["serving_default"](image_bytes=tf.constant(blobs))
    truth = np.array([[float(r[1]), float(r[2])] for r in rows[:6]])
    assert served["value"].shape == (6, 2)
    for column in range(2):  # each value in its target's units, in the targets' order
        assert np.corrcoef(served["value"].numpy()[:, column], truth[:, column])[0, 1] > 0.9
    errors = np.abs(served["value"].numpy() - truth).mean(axis=0)
    assert errors[0] < 3.0 and errors[1] < 0.15, errors  # a twentieth of each range
    np.testing.assert_allclose(served["value"].numpy(), result.model.predict(
        np.stack([tf.io.decode_png(b).numpy() for b in blobs]).astype("float32"), verbose=0), atol=1e-4)


def test_predict_prints_each_target_in_its_column(two_targets, regression_csv):
    from tlkeras.predict import format_predictions, predict

    folder = os.path.dirname(regression_csv)
    rows = predict(two_targets.run_dir, [os.path.join(folder, "000.png"), os.path.join(folder, "001.png")]).rows
    assert set(rows[0]["values"]) == {"age", "score"}
    table = format_predictions(rows, "table").splitlines()
    assert table[0].split() == ["path", "age", "score"] and len(table) == 3
    csv_lines = format_predictions(rows, "csv").splitlines()
    assert csv_lines[0] == "path,age,score"
    assert float(csv_lines[1].split(",")[1]) == pytest.approx(rows[0]["values"]["age"])


def test_the_report_shows_predicted_against_true_values(two_targets, tmp_path):
    from tlkeras.report import VALUES_FILE, write_report

    values = np.array([[30.0, 4.0], [50.0, 3.0], [70.0, 2.5]])
    files = write_report(str(tmp_path), history=two_targets.history, metrics=two_targets.metrics,
                         probabilities=values, labels=values + 1.0, class_names=["age", "score"], images_of=None,
                         config={}, task=get_task("regression"))
    assert [os.path.basename(f) for f in files] == ["training_curves.png", VALUES_FILE, "report.html"]
    page = open(files[-1], encoding="utf-8").read()
    assert f"<tr><th>r2</th><td>{two_targets.metrics['r2']}</td></tr>" in page  # the headline, not only the count
    age = two_targets.metrics["per_target"]["age"]
    assert f"<tr><th>age</th><td>{age['mae']:.4f}</td><td>{age['rmse']:.4f}</td>" in page


def test_the_loss_is_taken_in_standard_units():
    loss = StandardisedLoss("huber", scale=[2.0, 10.0])
    # errors of 1 and 3 deviations: 0.5 x 1^2 (quadratic within one) and 3 - 0.5 (linear beyond), averaged
    value = loss(np.array([[10.0, 0.0]]), np.array([[12.0, 30.0]]))
    assert float(value) == pytest.approx((0.5 + 2.5) / 2)
    assert float(StandardisedLoss("mse", scale=[2.0])(np.array([[0.0]]), np.array([[4.0]]))) == pytest.approx(4.0)
    assert float(StandardisedLoss("mae", scale=[2.0])(np.array([[0.0]]), np.array([[4.0]]))) == pytest.approx(2.0)


def test_a_target_range_bounds_every_value(colour_backbone):
    model = tlkeras.build_model(colour_backbone, 1, task="regression",
                                task_options={"mean": [0.0], "std": [1.0], "target_range": [1.0, 5.0]})
    layer = model.get_layer("predictions")
    layer.kernel.assign(np.full(layer.kernel.shape, 50.0, "float32"))  # far outside the range either way
    images = np.stack([np.zeros((32, 32, 3)), np.full((32, 32, 3), 255.0)]).astype("float32")
    values = model.predict(images, verbose=0)
    assert values.min() >= 1.0 and values.max() <= 5.0
    reloaded = keras.models.load_model(_saved(model), safe_mode=True)
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), values, atol=1e-6)


def _saved(model) -> str:
    import tempfile

    path = os.path.join(tempfile.mkdtemp(), "model.keras")
    model.save(path)
    return path


def test_auto_reads_many_distinct_numbers_as_a_regression_and_class_ids_as_classes(caplog):
    from tlkeras.tasks import resolve_task

    with caplog.at_level("INFO", logger="tlkeras"):
        assert resolve_task("auto", np.array([f"{v / 3:.2f}" for v in range(40)]), "data").name == "regression"
    assert "every label of data is a number and 40 of them are distinct (more than 20)" in caplog.text
    assert "set task: single_label to read them as classes" in caplog.text
    assert resolve_task("auto", np.arange(40) % 30, "data").name == "single_label"  # integers: class indices
    assert resolve_task("auto", np.array(["1", "2", "3"] * 5), "data").name == "single_label"  # few values: classes
    assert resolve_task("auto", np.random.default_rng(0).normal(size=(30, 2)), "data").name == "regression"


def test_the_split_keeps_the_range_in_both_parts():
    task = get_task("regression")
    targets = np.arange(100, dtype=np.float32)[:, None]
    train, val = task.split(targets, 0.2, seed=3)
    assert len(val) == 20 and len(set(train) | set(val)) == 100
    assert np.histogram(targets[val, 0], bins=5, range=(0, 100))[0].tolist() == [4] * 5


@pytest.mark.parametrize("settings,message", [
    ({"task": "single_label", "loss": "mse"}, "loss: 'mse' is a regression setting, but task is single_label"),
    ({"task": "regression", "loss": "l1"}, "loss: 'l1' is not valid: use one of huber, mse, mae"),
    ({"task": "regression", "target_range": [5, 1]}, "target_range: [5, 1] is not valid: use [low, high]"),
    ({"task": "regression", "class_weight": "balanced"}, "class_weight: 'balanced' weighs classes, and a regression"),
    ({"task": "regression", "label_smoothing": 0.1}, "label_smoothing: 0.1 smooths class labels"),
    ({"task": "single_label", "label_column": ["age", "score"]},
     "are several regression targets, but task is single_label"),
])
def test_regression_settings_that_cannot_apply_are_one_line_before_any_work(settings, message):
    with pytest.raises(ConfigError) as caught:
        tlkeras.FinetuneConfig(data="x", **settings).validate()
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_cell_that_is_not_a_number_is_named_with_its_row(tmp_path, colour_backbone):
    path = write_regression_csv(str(tmp_path), count=6)
    lines = open(path, encoding="utf-8").read().splitlines()
    lines[4] = lines[4].rsplit(",", 1)[0] + ",n/a"
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"row 4 of 'score' holds 'n/a', which is not a number"):
        tlkeras.build_and_finetune(path, backbone=colour_backbone, task="regression", label_column=["age", "score"],
                                   output_dir=str(tmp_path / "run"), **RUN)


def test_self_training_is_refused_for_a_regression(tmp_path, regression_csv, colour_backbone):
    with pytest.raises((ConfigError, DataError), match="regression"):
        tlkeras.build_and_finetune(regression_csv, backbone=colour_backbone, label_column="age",
                                   unlabeled_data=os.path.dirname(regression_csv), output_dir=str(tmp_path / "r"),
                                   **RUN)


def test_the_card_and_run_json_say_what_scaled_the_values(two_targets):
    with open(os.path.join(two_targets.export_dir, "assets", "model_card.json"), encoding="utf-8") as f:
        card = json.load(f)
    assert card["task"] == "image regression" and card["task_name"] == "regression"
    assert card["outputs"] == {"value": "[N, 2] the values of age, score, in the targets' units"}
    assert card["task_options"]["std"] == model_info(two_targets.model).task_options["std"]


def test_a_text_regression_learns_a_count_and_its_export_takes_strings(tmp_path, hub_text_module):
    """Texts of 6 words, k of them warm: the target is 10 k (0-60); the hub module's embedding averages words."""
    import csv

    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        warm = int(rng.integers(0, 7))
        words = list(rng.choice(["red", "fire", "apple"], warm)) + list(rng.choice(["blue", "sky", "sea"], 6 - warm))
        rows.append((" ".join(rng.permutation(words)), 10.0 * warm))
    path = str(tmp_path / "texts.csv")
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([("text", "warmth")] + rows)
    result = tlkeras.build_and_finetune(path, backbone=f"hub:{hub_text_module}", task="regression",
                                        label_column="warmth", head={"dropout": 0.0},
                                        stage1={"epochs": 40, "learning_rate": 0.05}, stage2={"epochs": 0},
                                        output_dir=str(tmp_path / "run"), **RUN)
    assert result.class_names == ["warmth"] and result.metrics["r2"] >= 0.8, result.metrics
    texts = [text for text, _ in rows[:5]]
    served = tf.saved_model.load(result.export_dir).signatures["serving_default"](text=tf.constant(texts))
    np.testing.assert_allclose(served["value"].numpy(), result.model.predict(tf.constant(texts), verbose=0),
                               atol=1e-5)
    with open(os.path.join(result.export_dir, "assets", "model_card.json"), encoding="utf-8") as f:
        assert json.load(f)["task"] == "text regression"


def test_ranking_scores_regression_candidates_by_logme_and_the_probes_r2(tmp_path, regression_csv, colour_backbone):
    from tlkeras.ranking import rank_backbones

    constant = save_colour_backbone(str(tmp_path / "constant.keras"), informative=False)
    result = rank_backbones(regression_csv, [constant, colour_backbone], label_column="age", task="regression",
                            head={"dropout": 0.0}, stage1={"epochs": 25, "learning_rate": 0.05}, batch_size=16,
                            output_dir=str(tmp_path / "out"))
    best, worst = result.entries
    assert best["backbone"] == colour_backbone and best["probe_metric"] == "R2"
    assert best["logme"] > worst["logme"] + 0.1  # LogME's regression form: the evidence of the target column
    assert best["probe_accuracy"] >= 0.8 and worst["probe_accuracy"] <= 0.05  # a constant feature: R2 about 0


def test_the_cli_trains_two_targets_and_evaluate_reports_each(tmp_path, regression_csv, colour_backbone):
    from click.testing import CliRunner

    from tlkeras import cli

    run = str(tmp_path / "run")
    trained = CliRunner().invoke(cli.main, [
        "train", "--data", regression_csv, "--backbone", colour_backbone, "--output-dir", run, "--no-export",
        "--set", "label_column=[age, score]", "--set", "head.dropout=0", "--set", "stage1.epochs=20",
        "--set", "stage1.learning_rate=0.05", "--set", "stage2.epochs=0", "--set", "report=false"])
    assert trained.exit_code == 0, trained.output
    assert "val R2: " in trained.output
    evaluated = CliRunner().invoke(cli.main, ["evaluate", run])
    assert evaluated.exit_code == 0, evaluated.output
    lines = evaluated.output.splitlines()
    header = lines.index("target  MAE     RMSE    R2      Spearman")
    assert [line.split()[0] for line in lines[header + 1: header + 3]] == ["age", "score"]


def test_a_mirrored_regression_run_matches_one_device(tmp_path, regression_csv, colour_backbone):
    """The own tf.distribute loop (2 logical CPUs) on the standardised loss: the same global batch (one batch per
    epoch) as on one device, the same run."""
    options = {**RUN, "data": regression_csv, "backbone": colour_backbone, "label_column": ["age", "score"],
               "export": False, "head": {"dropout": 0.0}, "stage1": {"epochs": 3, "learning_rate": 0.05},
               "stage2": {"epochs": 2}}
    one = tlkeras.build_and_finetune(**{**options, "batch_size": 32}, strategy="default", output_dir=str(tmp_path / "a"))
    two = tlkeras.build_and_finetune(**{**options, "batch_size": 16}, strategy="mirrored", output_dir=str(tmp_path / "b"))
    assert two.history["epoch"] == [1, 2, 3, 4, 5] and "mae" in two.history and "val_mae" in two.history
    np.testing.assert_allclose(two.history["val_loss"], one.history["val_loss"], rtol=1e-4)
    np.testing.assert_allclose(two.history["mae"], one.history["mae"], rtol=1e-4)
    for x, y in zip(one.model.get_weights(), two.model.get_weights()):
        np.testing.assert_allclose(y, x, atol=1e-4)


def test_a_tflite_file_answers_the_values_of_the_saved_model(two_targets, regression_csv):
    from tlkeras.export import export_run
    from tlkeras.predict import predict

    export_run(two_targets.run_dir, formats=["tflite"])
    folder = os.path.join(two_targets.run_dir, "tflite")
    with open(os.path.join(folder, "parity.json"), encoding="utf-8") as f:
        parity = json.load(f)["float32"]
    assert parity["top1_agreement"] == 1.0 and parity["measure"].startswith("each value within 1% of its target")
    images = [os.path.join(os.path.dirname(regression_csv), f"00{i}.png") for i in range(3)]
    served = predict(os.path.join(folder, "model_float32.tflite"), images).rows
    saved = predict(two_targets.export_dir, images).rows
    for a, b in zip(served, saved):
        assert a["values"] == pytest.approx(b["values"], abs=1e-3)


def test_an_interrupted_regression_run_resumes_to_the_same_run(tmp_path, regression_csv, colour_backbone):
    from conftest import CtrlC

    options = {**RUN, "data": regression_csv, "backbone": colour_backbone, "label_column": "age", "export": False,
               "head": {"dropout": 0.0}, "stage1": {"epochs": 3, "learning_rate": 0.05}, "stage2": {"epochs": 2}}
    whole = tlkeras.build_and_finetune(**options, output_dir=str(tmp_path / "whole"))
    with pytest.raises(tlkeras.errors.Interrupted, match=r"4 finished epoch\(s\) are saved"):
        tlkeras.build_and_finetune(**options, output_dir=str(tmp_path / "cut"), callbacks=[CtrlC((2, 5))])
    resumed = tlkeras.build_and_finetune(**options, output_dir=str(tmp_path / "cut"), resume=True)
    assert resumed.history["stage"] == [1, 1, 1, 2, 2]
    np.testing.assert_allclose(resumed.history["loss"], whole.history["loss"], rtol=1e-4)
    assert model_info(resumed.model).task_options == model_info(whole.model).task_options
