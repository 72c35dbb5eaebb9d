"""tlkeras tune: Optuna's search over the two-stage recipe, its trials sharing the data, the model and the cached
features; the study in a database that a killed search and several processes share."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import tlkeras
from conftest import save_colour_backbone, write_image_folder
from tlkeras.config import FinetuneConfig
from tlkeras.errors import ConfigError, TlkerasError

BASE = {"batch_size": 8, "report": False, "tensorboard": False, "export": False, "verbose": 0,
        "stage1": {"epochs": 4}, "stage2": {"epochs": 2}}
STAGE1_SPACE = {"stage1.learning_rate": {"low": 1e-3, "high": 1e-1, "log": True}, "head.dropout": [0.0, 0.3]}


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("tune-colours"), per_class=8)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return save_colour_backbone(str(tmp_path_factory.mktemp("tune-backbone") / "colours.keras"))


def _trials(folder) -> list[dict]:
    with open(os.path.join(folder, "trials.csv"), encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_stage_1_trials_share_one_backbone_pass_and_start_from_the_same_weights(tmp_path, colours, backbone,
                                                                                monkeypatch):
    from tlkeras import caching, workflow

    passes, starts = [], []
    real_compute, real_train = caching.compute_cache, workflow._train

    def compute(*args, **kwargs):
        passes.append(1)
        return real_compute(*args, **kwargs)

    def train(run, model, *args, **kwargs):
        starts.append([w.copy() for w in model.get_weights()])
        return real_train(run, model, *args, **kwargs)

    monkeypatch.setattr(caching, "compute_cache", compute)
    monkeypatch.setattr(workflow, "_train", train)
    result = tlkeras.tune(colours, backbone=backbone, **{**BASE, "stage2": {"epochs": 0}},
                          search_space=STAGE1_SPACE, n_trials=4, output_dir=str(tmp_path / "search"))
    assert len(starts) == 4 and len(passes) == 2  # one frozen pass over the training and one over the validation split
    for weights in starts[1:]:  # every trial from the pretrained backbone and the same fresh head, bit for bit
        assert all(np.array_equal(a, b) for a, b in zip(starts[0], weights))
    rows = _trials(tmp_path / "search")
    assert [r["backbone_passes"] for r in rows] == ["1", "0", "0", "0"]
    assert {r["state"] for r in rows} <= {"complete", "pruned"}
    best = max((r for r in rows if r["value"]), key=lambda r: float(r["value"]))
    assert result.best_trial == int(best["number"]) and result.best_value == pytest.approx(float(best["value"]))
    assert result.metric == "accuracy" and 0 <= result.best_value <= 1


def test_best_yaml_trains_the_best_settings_as_they_are_and_the_report_shows_the_search(tmp_path, colours, backbone):
    result = tlkeras.tune(colours, backbone=backbone, **{**BASE, "report": True}, n_trials=4,
                          output_dir=str(tmp_path / "search"),
                          search_space={**STAGE1_SPACE, "stage2.unfreeze": [0.5, "all"]})
    best = FinetuneConfig.from_yaml(result.best_config)
    assert best.stage1.learning_rate == result.best_params["stage1.learning_rate"]
    assert best.head.dropout == result.best_params["head.dropout"]
    assert best.stage2.unfreeze == result.best_params["stage2.unfreeze"]
    assert best.output_dir == os.path.join(str(tmp_path / "search"), "best")
    trained = tlkeras.build_and_finetune(config=result.best_config, verbose=0)
    assert trained.run_dir == best.output_dir and trained.config.stage1.learning_rate == best.stage1.learning_rate
    with open(os.path.join(str(tmp_path / "search"), "tune.json"), encoding="utf-8") as f:
        summary = json.load(f)
    assert summary["best"]["params"] == result.best_params and len(summary["trials"]) == 4
    complete = [t for t in summary["trials"] if t["state"] == "complete"]
    if len(complete) >= 3 and len({t["value"] for t in complete}) > 1:  # fANOVA needs scores that differ
        assert set(summary["importances"]) == set(result.best_params)
        assert sum(summary["importances"].values()) == pytest.approx(1.0, abs=1e-3)
    else:  # too few, or all alike: nothing to say, and nothing made up
        assert summary["importances"] == {}
    page = (tmp_path / "search" / "tune.html").read_text()
    assert f"Best: trial {result.best_trial}" in page and page.count("<img") >= 2  # the history, the keys' scores
    assert (tmp_path / "search" / "tune_history.png").stat().st_size > 1000


def test_a_trial_behind_the_others_is_pruned(tmp_path, colours, backbone, monkeypatch):
    import optuna

    from tlkeras.tuning import search as tuning

    monkeypatch.setattr(tuning, "PRUNER_STARTUP_TRIALS", 1)
    monkeypatch.setattr(tuning, "PRUNER_WARMUP_EPOCHS", 0)
    folder = tmp_path / "search"
    folder.mkdir()
    study = optuna.create_study(storage=f"sqlite:///{folder / 'tune.db'}", study_name=tuning.STUDY_NAME,
                                direction="maximize")
    for rate in (0.05, 1e-7, 1e-7):  # a rate that learns, then two that cannot move the head
        study.enqueue_trial({"stage1.learning_rate": rate})
    result = tlkeras.tune(colours, backbone=backbone, **{**BASE, "stage1": {"epochs": 6}, "stage2": {"epochs": 0}},
                          search_space={"stage1.learning_rate": {"low": 1e-7, "high": 1e-1, "log": True}},
                          n_trials=3, output_dir=str(folder))
    states = [t["state"] for t in result.trials]
    assert states == ["complete", "pruned", "pruned"], result.trials
    assert all(t["epochs"] is None for t in result.trials[1:])  # stopped inside their first stage
    assert "pruned at epoch 1" in _trials(folder)[1]["reason"]


def _tune_command(folder, data, backbone, trials, storage=None):
    args = [sys.executable, "-m", "tlkeras.cli", "tune", "--data", data, "--backbone", backbone, "--output-dir",
            folder, "--trials", str(trials), "--batch-size", "8", "--set", "stage1.epochs=3",
            "--set", "stage2.epochs=1", "--set", "report=false", "--set", "tensorboard=false"]
    return args + (["--storage", storage] if storage else [])


def _study_trials(url):
    import optuna

    return optuna.load_study(study_name="tlkeras", storage=url).get_trials(deepcopy=False)


@pytest.mark.slow
def test_a_killed_search_goes_on_with_the_same_command_and_counts_each_trial_once(tmp_path, colours, backbone):
    folder = str(tmp_path / "search")
    command = _tune_command(folder, colours, backbone, 4)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not os.path.isdir(os.path.join(folder, "trials", "0002")):
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)  # mid-search: two trials done, the third running
    process.wait()
    url = f"sqlite:///{os.path.join(folder, 'tune.db')}"
    before = {t.number: t.state.name for t in _study_trials(url)}
    assert "RUNNING" in before.values(), before
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    trials = _study_trials(url)
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 4  # the killed search's finished trials count once; no trial twice
    interrupted = [t for t in trials if t.state.name == "FAIL"]
    assert len(interrupted) == 1 and interrupted[0].system_attrs["fail_reason"].startswith("interrupted")
    rerun = [t for t in finished if t.user_attrs.get("rerun_of") == interrupted[0].number]
    assert len(rerun) == 1 and rerun[0].params == interrupted[0].params  # the interrupted settings ran again
    assert "trial 2 was interrupted; its settings run again first" in done.stderr


@pytest.mark.slow
def test_two_processes_on_one_sqlite_study_share_its_trials(tmp_path, colours, backbone):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    processes = [subprocess.Popen(_tune_command(str(tmp_path / name), colours, backbone, 6, storage=url),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for name in ("a", "b")]
    for process in processes:
        assert process.wait(timeout=400) == 0, process.stderr.read()[-2000:]
    trials = _study_trials(url)
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) and 6 <= len(finished) <= 7  # each stops once the study holds 6
    both = [len(_trials(tmp_path / name)) for name in ("a", "b")]
    assert all(count == len(trials) for count in both)  # each process's trials.csv lists the whole study
    assert len({(t.datetime_start.isoformat(), t.number) for t in trials}) == len(trials)


@pytest.mark.parametrize("options,message", [
    ({"search_space": {"stage2.learning_rte": [1e-3]}}, "search: 'stage2.learning_rte' is not a config key. Did "
                                                        "you mean 'stage2.learning_rate'"),
    ({"search_space": {"stage2.learning_rate": {"low": 1e-2, "high": 1e-3}}}, "search: stage2.learning_rate: low "
                                                                              "0.01 and high 0.001 are not a range"),
    ({"search_space": {"image_size": [32, 64]}}, "search: image_size cannot vary in a search: the data and the "
                                                 "model are built once"),
    ({"search_space": {"stage2.method": ["full", "lora"]}}, "search: stage2.method cannot vary in one search"),
    ({"search_space": {"stage2.unfreeze": [0.5, "most"]}}, "search: stage2.unfreeze: 'most' is not a value it takes"),
    ({"n_trials": 0}, "n_trials: 0 is not valid: use a whole number of trials, at least 1."),
    ({"n_trials": None}, "tune: say when to stop: n_trials (--trials N) or timeout (--minutes M)."),
    ({"storage": "postgresql://nobody@127.0.0.1:1/nothing"}, "storage: 'postgresql://nobody@127.0.0.1:1/nothing'"),
    ({"val_split": 0.0}, "tune: each trial is scored on the validation split, but val_split is 0"),
])
def test_what_a_search_cannot_do_is_one_line_before_any_work(tmp_path, colours, backbone, options, message):
    settings = {"n_trials": 2, "search_space": STAGE1_SPACE, **options}
    with pytest.raises((ConfigError, TlkerasError)) as caught:
        tlkeras.tune(colours, backbone=backbone, **BASE, output_dir=str(tmp_path / "search"), **settings)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not os.path.exists(tmp_path / "search" / "trials")  # nothing trained


def test_a_study_of_another_config_in_the_folder_is_refused(tmp_path, colours, backbone):
    folder = str(tmp_path / "search")
    tlkeras.tune(colours, backbone=backbone, **{**BASE, "stage2": {"epochs": 0}}, search_space=STAGE1_SPACE,
                 n_trials=1, output_dir=folder)
    with pytest.raises(ConfigError, match=r"holds a study of another config or search space .* use another "
                                          r"output_dir"):
        tlkeras.tune(colours, backbone=backbone, **{**BASE, "stage2": {"epochs": 0}, "batch_size": 4},
                     search_space=STAGE1_SPACE, n_trials=2, output_dir=folder)


def test_k_folds_validate_each_training_example_once_and_leave_the_validation_split_alone(tmp_path, colours,
                                                                                        backbone, monkeypatch):
    from tlkeras.inputs.image import ImageInputs

    seen = []
    real = ImageInputs.with_split

    def with_split(self, bundle, train, val, cfg, size):
        seen.append((len(train), len(val), len(bundle.train_examples), len(bundle.val_examples)))
        return real(self, bundle, train, val, cfg, size)

    monkeypatch.setattr(ImageInputs, "with_split", with_split)
    result = tlkeras.tune(colours, backbone=backbone, **{**BASE, "stage2": {"epochs": 0}}, search_space=STAGE1_SPACE,
                          n_trials=2, folds=3, output_dir=str(tmp_path / "search"))
    (train_count, val_count), = {row[2:] for row in seen}  # the whole training split, the same validation split
    assert len(seen) == 3 and sum(val for _, val, _, _ in seen) == train_count  # each training example validates once
    assert all(train + val == train_count for train, val, _, _ in seen) and val_count > 0
    with open(os.path.join(str(tmp_path / "search"), "tune.json"), encoding="utf-8") as f:
        trials = json.load(f)["trials"]
    assert [t["backbone_passes"] for t in trials] == [3, 0]  # a pass per fold, shared by the next trial
    assert result.best_value == pytest.approx(max(t["value"] for t in trials))
