"""Self-training on unlabelled data: which pseudo-labels are kept, that they train the student and never validate
it, what a resumed run redoes, and the one-line refusals of bad unlabelled data."""

import csv
import json
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

import tlkeras
from conftest import save_colour_backbone, write_image_folder
from tlkeras import cli
from tlkeras.errors import ConfigError, DataError
from tlkeras.self_training import PseudoLabels, select


def _flat_folder(tmp_path, per_class: int, seed: int):
    """Unlabelled images: one folder, the class only in each file's name (for checking, never read by tlkeras)."""
    source = write_image_folder(tmp_path / f"labelled-{seed}", per_class=per_class, seed=seed)
    flat = tmp_path / "unlabelled"
    flat.mkdir()
    truth = {}
    for name in sorted(os.listdir(source)):
        for file in sorted(os.listdir(os.path.join(source, name))):
            target = flat / f"{name}-{file}"
            shutil.copy(os.path.join(source, name, file), target)
            truth[str(target)] = name
    return str(flat), truth


def _pseudo(run_dir: str, round_: int = 1) -> list[dict]:
    with open(os.path.join(run_dir, "self_training", f"round-{round_}", "pseudo_labels.csv"), encoding="utf-8") as f:
        return list(csv.DictReader(f))


# === Which pseudo-labels are kept ===


def test_select_keeps_the_surest_rows_of_each_class_up_to_its_cap():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (400, 3))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labelled = [2, 5, 10]
    kept = select(p, labelled, threshold=0.8, cap=4)
    confidence, predicted = p.max(axis=1), p.argmax(axis=1)
    assert np.all(kept.confidence >= 0.8) and np.array_equal(kept.labels, predicted[kept.rows])
    for c, count in enumerate(labelled):
        mine = kept.rows[kept.labels == c]
        eligible = np.flatnonzero((predicted == c) & (confidence >= 0.8))
        assert len(mine) == min(4 * count, len(eligible))  # the cap, or all there are
        left_out = np.setdiff1d(eligible, mine)
        if len(left_out):  # the kept ones are the most confident of their class
            assert confidence[mine].min() >= confidence[left_out].max()
    assert np.array_equal(kept.rows, np.sort(kept.rows))
    # nothing reaches the threshold: nothing is kept
    assert len(select(np.full((5, 2), 0.5), [3, 3], threshold=0.9, cap=5).rows) == 0


def test_pseudo_labels_survive_their_file(tmp_path):
    names = ["a, the first", 'b "quoted"']
    kept = PseudoLabels(np.array([3, 7]), np.array([1, 0]), np.array([0.95, 0.9], np.float32))
    kept.write(str(tmp_path / "p.csv"), names)
    back = PseudoLabels.read(str(tmp_path / "p.csv"), names)
    assert back.rows.tolist() == [3, 7] and back.labels.tolist() == [1, 0]
    np.testing.assert_allclose(back.confidence, kept.confidence, atol=1e-6)


# === A run ===


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> dict:
    """Options of a run whose backbone sees colour (the mean colour in 4 mixes): a teacher that learns the colour
    folder's classes in a few epochs."""
    backbone = save_colour_backbone(str(tmp_path_factory.mktemp("colour-backbone") / "colours.keras"))
    return {"backbone": backbone, "image_size": 32, "batch_size": 8, "report": False, "tensorboard": False,
            "stage1": {"epochs": 10, "learning_rate": 0.05}}


def test_self_training_pseudo_labels_the_unlabelled_images_and_trains_the_student_on_them(tmp_path, colours):
    labelled = write_image_folder(tmp_path / "labelled", per_class=16, seed=0)
    flat, truth = _flat_folder(tmp_path, per_class=10, seed=1)
    out = str(tmp_path / "run")
    result = tlkeras.build_and_finetune(
        labelled, unlabeled_data=flat, **colours, val_split=0.25, export=False, output_dir=out, verbose=0,
        stage2={"epochs": 1}, self_training={"threshold": 0.5, "cap": 0.75})
    record = json.load(open(os.path.join(out, "run.json"), encoding="utf-8"))
    rows = _pseudo(out)
    files = sorted(truth)
    # the labelled data is what run.json fingerprints; validation is the labelled split, untouched
    assert record["class_counts"]["train"] == {"blue": 12, "green": 12, "red": 12}
    assert result.metrics["count"] == 12
    st = record["self_training"]
    assert st["unlabeled"] == 30 and st["rounds"][0]["pseudo_labels"] == len(rows) > 0
    counts = {name: sum(r["class"] == name for r in rows) for name in ("blue", "green", "red")}
    assert st["rounds"][0]["per_class"] == counts
    assert all(k <= 9 for k in counts.values())  # cap 0.75 x 12 labelled per class
    assert all(float(r["confidence"]) >= 0.5 for r in rows)
    # the teacher learned the colours: its pseudo-labels are right
    right = [truth[files[int(r["row"])]] == r["class"] for r in rows]
    assert np.mean(right) >= 0.9, rows
    # the student trained on the labelled images and the pseudo-labelled ones, and is the run's model
    assert result.history["epoch"] == list(range(1, 12))
    teacher = json.load(open(os.path.join(out, "self_training", "round-1", "history.json"), encoding="utf-8"))
    assert teacher["loss"] != result.history["loss"]
    assert os.path.isfile(os.path.join(out, "self_training", "round-1", "model.weights.h5"))
    # the student is kept when it does at least as well as the teacher on validation, and run.json says which
    teacher_score, student_score = st["rounds"][0]["val_accuracy"], st["student_val_accuracy"]
    assert teacher_score == pytest.approx(teacher["val_accuracy"][-1]) or teacher_score in teacher["val_accuracy"]
    assert st["kept"] == ("student" if student_score >= teacher_score else "round 1")


def test_the_run_keeps_the_teacher_when_the_student_does_worse_on_validation(tmp_path, tiny_model, caplog):
    from tlkeras.workflow import _keep_the_better

    teacher = [w.copy() for w in tiny_model.get_weights()]
    tiny_model.save_weights(str(tmp_path / "teacher.weights.h5"))
    tiny_model.set_weights([w + 1.0 for w in teacher])  # the student's weights
    rounds = [{"round": 1, "val_accuracy": 0.9, "weights": "teacher.weights.h5"}]
    student = {"epoch": [1, 2, 3], "val_accuracy": [0.5, 0.95, 0.6]}
    assert _keep_the_better(tiny_model, rounds, student, 2, str(tmp_path)) is None  # epoch 2's 0.95 beats 0.9
    assert not np.array_equal(tiny_model.get_weights()[0], teacher[0])
    with caplog.at_level("WARNING", logger="tlkeras"):
        kept = _keep_the_better(tiny_model, rounds, student, None, str(tmp_path))  # the last epoch's 0.6
    assert kept == rounds[0]
    for back, before in zip(tiny_model.get_weights(), teacher):
        np.testing.assert_array_equal(back, before)
    assert "the student's validation accuracy 0.6000 is below round 1's 0.9000" in caplog.text
    assert _keep_the_better(tiny_model, rounds, {"epoch": [1], "loss": [0.1]}, None, str(tmp_path)) is None


def test_a_self_training_run_killed_in_the_student_redoes_no_round(tmp_path, image_folder, tiny):
    # The finished round is taken from its files: its pseudo-labels are read back, not made again
    flat, _ = _flat_folder(tmp_path, per_class=4, seed=2)
    out = str(tmp_path / "run")
    options = dict(unlabeled_data=flat, **tiny, val_split=0.25, export=False, output_dir=out, verbose=0,
                   stage1={"epochs": 2}, stage2={"epochs": 1, "unfreeze": "blocks:1"},
                   self_training={"threshold": 0.4})
    tlkeras.build_and_finetune(image_folder, **options)
    first = _pseudo(out)
    for name in ("model.keras", "metrics.json", "run.json"):  # as a kill in the student's last epoch leaves it
        os.remove(os.path.join(out, name))
    with open(os.path.join(out, "self_training", "round-1", "pseudo_labels.csv"), "a", encoding="utf-8") as f:
        f.write("")  # unchanged content; a rerun that relabelled would rewrite it
    stamp = os.stat(os.path.join(out, "self_training", "round-1", "pseudo_labels.csv")).st_mtime_ns
    tlkeras.build_and_finetune(image_folder, resume=True, **options)
    assert _pseudo(out) == first
    assert os.stat(os.path.join(out, "self_training", "round-1", "pseudo_labels.csv")).st_mtime_ns == stamp
    assert json.load(open(os.path.join(out, "run.json"), encoding="utf-8"))["self_training"]["rounds"][0][
        "pseudo_labels"] == len(first)


# === Bad unlabelled data: one line, before training ===


def test_unlabelled_images_that_are_also_labelled_are_refused_by_name(tmp_path, image_folder, tiny):
    copy = tmp_path / "mixed"
    shutil.copytree(os.path.join(image_folder, "red"), copy)
    os.symlink(os.path.join(image_folder, "blue", sorted(os.listdir(os.path.join(image_folder, "blue")))[0]),
               copy / "link.png")
    with pytest.raises(DataError, match=r"unlabeled_data: \d+ of its images are also in the (training|validation) "
                                        r"data, e.g. '.*(red|blue)"):
        tlkeras.build_and_finetune(image_folder, unlabeled_data=str(copy), **tiny, output_dir=str(tmp_path / "r"),
                                   verbose=0)
    assert not os.path.exists(tmp_path / "r" / "checkpoints")


def test_bad_unlabelled_data_is_one_line_before_any_work(tmp_path, image_folder, tiny):
    runner = CliRunner()
    missing = runner.invoke(cli.main, ["train", "--data", image_folder, "--unlabeled-data", str(tmp_path / "nope"),
                                       "--output-dir", str(tmp_path / "r")])
    assert missing.exit_code != 0
    assert "unlabeled_data: the path" in missing.output and "does not exist" in missing.output
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="unlabeled_data: .*empty.* holds no images that can be read"):
        tlkeras.build_and_finetune(image_folder, unlabeled_data=str(empty), **tiny, output_dir=str(tmp_path / "r"),
                                   verbose=0)
    with pytest.raises(DataError, match=r"unlabeled_data: an array of shape \[4\] .* is not a stack of images"):
        tlkeras.build_and_finetune(image_folder, unlabeled_data=np.zeros(4), **tiny,
                                   output_dir=str(tmp_path / "r2"), verbose=0)
    with pytest.raises(ConfigError, match=r"self_training.threshold: 1.5 is not valid"):
        tlkeras.build_and_finetune(image_folder, unlabeled_data=str(empty), **tiny, verbose=0,
                                   self_training={"threshold": 1.5})


def test_arrays_of_unlabelled_images_join_arrays_of_labelled_ones(tmp_path, colours):
    rng = np.random.default_rng(0)
    means = np.array([[220, 40, 40], [40, 200, 60]], np.float32)
    y = np.repeat([0, 1], 10)
    x = np.clip(means[y][:, None, None, :] + rng.normal(0, 20, (20, 16, 16, 3)), 0, 255).astype("uint8")
    unlabelled = np.clip(means[np.repeat([0, 1], 6)][:, None, None, :] + rng.normal(0, 20, (12, 16, 16, 3)),
                         0, 255).astype("uint8")
    # grey arrays without a channel axis [N, H, W], labelled and unlabelled, train together
    tlkeras.build_and_finetune((x.mean(axis=3), y), unlabeled_data=unlabelled.mean(axis=3), **colours, export=False,
                               verbose=0, output_dir=str(tmp_path / "grey"), stage2={"epochs": 0},
                               self_training={"threshold": 0.01})
    assert _pseudo(str(tmp_path / "grey"))
    out = str(tmp_path / "run")
    tlkeras.build_and_finetune((x, np.array(["red", "green"])[y]), unlabeled_data=unlabelled, **colours,
                               export=False, output_dir=out, verbose=0, stage2={"epochs": 0},
                               self_training={"threshold": 0.5})
    rows = _pseudo(out)
    assert rows and all(r["class"] == ("red" if int(r["row"]) < 6 else "green") for r in rows)
    # a folder beside arrays cannot train together: said before the teacher trains
    with pytest.raises(DataError, match="unlabeled_data: image files cannot train beside the labelled arrays"):
        flat, _ = _flat_folder(tmp_path, per_class=2, seed=3)
        tlkeras.build_and_finetune((x, y), unlabeled_data=flat, **colours, export=False, verbose=0,
                                   output_dir=str(tmp_path / "r2"), stage2={"epochs": 0})


@pytest.mark.slow
def test_kill_9_in_the_teacher_resumes_to_the_model_of_an_uninterrupted_run(tmp_path, colours):
    # One batch per epoch and no dropout, as the resume tests run: killed in the teacher's stage 2, the same
    # command goes on from the teacher's last finished epoch, labels the same rows and trains the same student.
    import signal
    import subprocess
    import sys

    worker = os.path.join(os.path.dirname(__file__), "resume_worker.py")
    labelled = write_image_folder(tmp_path / "labelled", per_class=8, seed=0)
    flat, _ = _flat_folder(tmp_path, per_class=6, seed=1)
    options = {**colours, "data": labelled, "unlabeled_data": flat, "val_split": 0.25, "batch_size": 32,
               "export": False, "head": {"dropout": 0.0}, "stage2": {"epochs": 2},
               "self_training": {"threshold": 0.5}}

    def train(out, *kill_at):
        return subprocess.run([sys.executable, worker, json.dumps({**options, "output_dir": str(out)}),
                               *map(str, kill_at)], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})

    whole = train(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = train(tmp_path / "cut", 2, 12)  # the teacher's second stage-2 epoch
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not os.path.exists(tmp_path / "cut" / "self_training" / "round-1" / "pseudo_labels.csv")
    resumed = train(tmp_path / "cut")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "stage 2: going on from epoch 12" in resumed.stderr
    cut, whole = _pseudo(str(tmp_path / "cut")), _pseudo(str(tmp_path / "whole"))
    assert [(r["row"], r["class"]) for r in cut] == [(r["row"], r["class"]) for r in whole] and cut
    np.testing.assert_allclose([float(r["confidence"]) for r in cut], [float(r["confidence"]) for r in whole],
                               atol=1e-4)
    a = tlkeras.load_model(str(tmp_path / "whole" / "model.keras")).get_weights()
    b = tlkeras.load_model(str(tmp_path / "cut" / "model.keras")).get_weights()
    for x, y in zip(a, b):
        np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-5)


def test_self_training_on_texts_labels_a_file_of_one_text_per_line(tmp_path, hub_text_module, text_csv):
    from conftest import text_rows

    rows = text_rows(12, seed=7)
    lines = tmp_path / "unlabelled.txt"
    lines.write_text("".join(f"{text}\n" for text, _ in rows) + "\n   \n", encoding="utf-8")  # and 2 empty lines
    out = str(tmp_path / "run")
    tlkeras.build_and_finetune(text_csv, backbone=f"hub:{hub_text_module}", unlabeled_data=str(lines),
                               text_column="review", label_column="sentiment", batch_size=8, export=False,
                               report=False, tensorboard=False, output_dir=out, verbose=0,
                               stage1={"epochs": 6, "learning_rate": 0.05}, stage2={"epochs": 0},
                               self_training={"threshold": 0.6})
    kept = _pseudo(out)
    assert kept and all(r["class"] == rows[int(r["row"])][1] for r in kept)  # rows of the 12 non-empty texts
    record = json.load(open(os.path.join(out, "run.json"), encoding="utf-8"))
    assert record["self_training"]["unlabeled"] == 12
    with open(os.path.join(out, "skipped_files.txt"), encoding="utf-8") as f:
        assert f.read().count("empty text") == 2


def test_a_student_taught_wrong_labels_is_not_kept(tmp_path, colours, monkeypatch, caplog):
    # Every pseudo-label one class off: the student learns the wrong colours, falls below the teacher on
    # validation, and the run keeps the teacher's weights - evaluated, saved and exported as the run's model.
    from tlkeras import self_training

    right = self_training.select

    def wrong(probabilities, labelled, threshold, cap):
        kept = right(probabilities, labelled, threshold, cap)
        return self_training.PseudoLabels(kept.rows, (kept.labels + 1) % 3, kept.confidence)

    monkeypatch.setattr(self_training, "select", wrong)
    labelled = write_image_folder(tmp_path / "labelled", per_class=8, seed=0)
    flat, _ = _flat_folder(tmp_path, per_class=30, seed=1)
    out = str(tmp_path / "run")
    with caplog.at_level("WARNING", logger="tlkeras"):
        result = tlkeras.build_and_finetune(labelled, unlabeled_data=flat, **colours, val_split=0.25, export=False,
                                            output_dir=out, verbose=0, stage2={"epochs": 2},
                                            self_training={"threshold": 0.3, "cap": 20})
    st = json.load(open(os.path.join(out, "run.json"), encoding="utf-8"))["self_training"]
    assert st["kept"] == "round 1", st
    # the teacher is the very model a run without the unlabelled data trains: what the user is kept at
    alone = tlkeras.build_and_finetune(labelled, **colours, val_split=0.25, export=False, verbose=0,
                                       output_dir=str(tmp_path / "alone"), stage2={"epochs": 2})
    teacher_history = json.load(open(os.path.join(out, "self_training", "round-1", "history.json"), encoding="utf-8"))
    assert teacher_history["loss"] == alone.history["loss"]
    assert alone.metrics["accuracy"] == pytest.approx(result.metrics["accuracy"])
    assert st["student_val_accuracy"] < st["rounds"][0]["val_accuracy"]
    assert result.metrics["accuracy"] == pytest.approx(st["rounds"][0]["val_accuracy"])
    assert "the run keeps that model" in caplog.text
    reloaded = tlkeras.load_model(os.path.join(out, "model.keras"))
    teacher = tlkeras.build_model(colours["backbone"], 3, image_size=32)
    teacher.load_weights(os.path.join(out, "self_training", "round-1", "model.weights.h5"))
    for a, b in zip(reloaded.get_weights(), teacher.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)
