"""Resumable runs: kill -9 in stage 1 and in stage 2, Ctrl-C, and what an existing output_dir allows."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import tlkeras
from conftest import CtrlC
from tlkeras import cli, rundir
from tlkeras.config import FinetuneConfig
from tlkeras.errors import Interrupted, TlkerasError
from tlkeras.resume import RunCheckpointer

WORKER = os.path.join(os.path.dirname(__file__), "resume_worker.py")


def _options(image_folder, tiny, **stage2):
    # One batch per epoch (18 training images, batch 32) and no dropout: the order of the
    # examples and the random state cannot change the result, so an interrupted run that resumes
    # correctly (weights, optimizer moments and step, schedule, phase) ends exactly where an
    # uninterrupted one does. Stage 1's rate is pinned at 3e-3 (the default before 1e-2): at 1e-2 the
    # round-off of oneDNN's threaded sums (1e-7) grows past the tolerance in one of 18816 weights.
    return {**tiny, "data": image_folder, "val_split": 0.25, "batch_size": 32, "export": False,
            "head": {"dropout": 0.0}, "stage1": {"epochs": 4, "learning_rate": 3e-3},
            "stage2": {"epochs": 3, **stage2}}


def _train(options, output_dir, kill_at=()):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, WORKER, json.dumps({**options, "output_dir": str(output_dir)}), *map(str, kill_at)],
        capture_output=True, text=True, timeout=300, env=env,
    )


def _history(run_dir):
    with open(os.path.join(run_dir, "history.json"), encoding="utf-8") as f:
        return json.load(f)


def _weights(run_dir):
    return tlkeras.load_model(os.path.join(run_dir, "model.keras")).get_weights()


def _state(run_dir):
    with np.load(os.path.join(run_dir, "checkpoints", "resume.npz"), allow_pickle=False) as data:
        return json.loads(str(data["state"][()]))


def _assert_resumed_like_uninterrupted(options, tmp_path, kills):
    """The same command killed with SIGKILL at each (kill_at, expected state, expected log line) of `kills` in turn,
    then run once more to its end: it ends where an uninterrupted run does. Returns the last process and the state
    each kill left."""
    whole = _train(options, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]

    states, before = [], None
    for kill_at, expect_state, expect_log in kills:
        killed = _train(options, tmp_path / "cut", kill_at)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        if before is not None:  # this process resumed the previous kill's run
            assert before in killed.stderr
        state = _state(tmp_path / "cut")
        assert {k: state[k] for k in expect_state} == expect_state
        assert not os.path.exists(tmp_path / "cut" / "model.keras")
        states.append(state)
        before = expect_log

    resumed = _train(options, tmp_path / "cut")  # the same command again
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert before in resumed.stderr

    a, b = _history(tmp_path / "whole"), _history(tmp_path / "cut")
    assert b["epoch"] == a["epoch"] == list(range(1, 8))  # no repeated or missing epoch
    assert b["stage"] == [1, 1, 1, 1, 2, 2, 2]
    np.testing.assert_allclose(b["val_loss"], a["val_loss"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(b["learning_rate"], a["learning_rate"], rtol=1e-6)
    for x, y in zip(_weights(tmp_path / "whole"), _weights(tmp_path / "cut")):
        np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-5)
    trainable = [(p / "stage2_trainable_layers.txt").read_text() for p in (tmp_path / "whole", tmp_path / "cut")]
    assert trainable[0] == trainable[1] and trainable[0]
    return resumed, states


@pytest.mark.slow
def test_kill_9_in_stage_1_and_again_in_uncached_stage_2_resumes_each_time(tmp_path, image_folder, tiny):
    # Stage 1 on cached features, then (unfreeze: all) the whole model on the input pipeline, whose state holds all
    # of it. Killed in stage 1, resumed from its last finished epoch; the same command killed again in stage 2,
    # resumed again: the run ends as an uninterrupted one does. (Stage 2 on cached activations above the cut is
    # resumed in the phase test below.)
    options = _options(image_folder, tiny, unfreeze="all")
    _assert_resumed_like_uninterrupted(options, tmp_path, kills=[
        ((1, 3), {"stage": 1, "epochs_done": 2, "finished": False}, "stage 1: going on from epoch 3"),
        ((2, 6), {"stage": 2, "epochs_done": 5, "finished": False}, "stage 2: going on from epoch 6"),
    ])


@pytest.mark.slow
def test_kill_9_in_stage_2_resumes_in_the_right_phase(tmp_path, image_folder, tiny):
    # Gradual unfreezing: phases of 1, 1 and 2 epochs; killed in the first epoch of the third phase,
    # after the second finished. The resumed run skips stage 1 and two phases.
    options = _options(image_folder, tiny, unfreeze="blocks:3", gradual_unfreeze=1, epochs=3)
    resumed, (state,) = _assert_resumed_like_uninterrupted(options, tmp_path, kills=[
        ((2, 7), {"stage": 2, "phase": 1, "epochs_done": 6, "finished": True},
         "resuming: stage 2 phase 2 finished, 6 epoch(s) done"),
    ])
    assert "stage 1: finished before the interruption, skipped" in resumed.stderr
    assert "stage 2 phase 3/3" in resumed.stderr and "phase 1/3" not in resumed.stderr
    # run.json's training seconds cover both processes: stage 1 ran only in the killed one, stage 2 in both
    before = state["seconds"]
    assert before["stage1"] > 0 and before["cache"] > 0 and before["stage2"] > 0
    with open(tmp_path / "cut" / "run.json", encoding="utf-8") as f:
        seconds = json.load(f)["seconds"]
    assert seconds["stage1"] == pytest.approx(before["stage1"], abs=2e-3)
    assert seconds["cache"] == pytest.approx(before["cache"], abs=2e-3)
    assert seconds["stage2"] > before["stage2"]


@pytest.mark.slow
def test_kill_9_with_dropout_and_several_batches_resumes_exactly_in_cached_stages(tmp_path, image_folder, tiny):
    # Several batches per epoch (18 training images, batch 4) and dropout in the head: the batch order of each epoch
    # and the dropout's random state decide the result. Both stages train on caches (the head on features, the top
    # on the activations at the cut). Killed in stage 1 and again in stage 2, the run ends where an uninterrupted
    # one does.
    options = {**_options(image_folder, tiny, unfreeze="blocks:1"), "batch_size": 4, "head": {"dropout": 0.3}}
    _assert_resumed_like_uninterrupted(options, tmp_path, kills=[
        ((1, 3), {"stage": 1, "epochs_done": 2, "finished": False}, "stage 1: going on from epoch 3"),
        ((2, 6), {"stage": 2, "epochs_done": 5, "finished": False}, "stage 2: going on from epoch 6"),
    ])


@pytest.mark.slow
def test_kill_9_with_dropout_augmentation_and_several_batches_resumes_exactly_uncached(tmp_path, image_folder, tiny):
    # Random flips make both stages run on the input pipeline (no caches): each epoch's batch order, the flips'
    # and the dropout's random states decide the result. Killed in stage 1 and again in stage 2 (the whole model),
    # the run ends where an uninterrupted one does.
    options = {**_options(image_folder, tiny, unfreeze="all"), "batch_size": 4, "head": {"dropout": 0.3},
               "augment": {"flip": "horizontal"}}
    _assert_resumed_like_uninterrupted(options, tmp_path, kills=[
        ((1, 3), {"stage": 1, "epochs_done": 2, "finished": False}, "stage 1: going on from epoch 3"),
        ((2, 6), {"stage": 2, "epochs_done": 5, "finished": False}, "stage 2: going on from epoch 6"),
    ])


def test_ctrl_c_saves_and_says_how_to_resume(tmp_path, image_folder, tiny):
    options = {**_options(image_folder, tiny, unfreeze="blocks:2"), "output_dir": str(tmp_path / "run"),
               "verbose": 0}
    with pytest.raises(Interrupted, match=r"interrupted: 5 finished epoch\(s\) are saved in .*checkpoints; run the "
                                          r"same command again \(or add --resume\) to continue"):
        tlkeras.build_and_finetune(callbacks=[CtrlC((2, 6))], **options)
    result = tlkeras.build_and_finetune(resume=True, **options)
    assert result.history["epoch"] == list(range(1, 8))
    assert result.history["stage"] == [1] * 4 + [2] * 3


def test_ctrl_c_before_any_epoch_says_there_is_nothing_to_resume(tmp_path, image_folder, tiny):
    options = {**_options(image_folder, tiny, unfreeze="blocks:2"), "output_dir": str(tmp_path / "run"), "verbose": 0}
    with pytest.raises(Interrupted, match="no epoch had finished, so there is nothing to resume"):
        tlkeras.build_and_finetune(callbacks=[CtrlC((1, 1))], **options)


# === What an existing output_dir allows (no training needed) ===


def _unfinished_run(path, cfg, state=True, finished=False):
    os.makedirs(path / "checkpoints", exist_ok=True)
    cfg.to_yaml(path / "config.yaml")
    if state:
        (path / "checkpoints" / "resume.npz").write_bytes(b"state")
    if finished:
        (path / "model.keras").write_bytes(b"model")
        (path / "metrics.json").write_text("{}")
        (path / "run.json").write_text(json.dumps({"status": finished}))
    return str(path)


def test_a_different_config_is_refused_with_the_ways_out(tmp_path):
    run = _unfinished_run(tmp_path, FinetuneConfig.from_dict({"stage1": {"epochs": 5}, "batch_size": 16}))
    other = FinetuneConfig.from_dict({"stage1": {"epochs": 3}, "batch_size": 16, "top_k": 2})
    with pytest.raises(TlkerasError, match=r"output_dir '.*' holds a run with a different config \(stage1.epochs: 5 -> 3\)\. "
                                           r"Add --resume to continue that run as it was configured, --overwrite"):
        rundir.prepare(run, other)
    with pytest.raises(TlkerasError, match=r"resume: the run in .* was configured differently \(stage1.epochs: 5 -> 3\)"):
        rundir.prepare(run, other, resume=True)
    # top_k, export, report, tensorboard and output_dir do not change training: no objection
    same = FinetuneConfig.from_dict({"stage1": {"epochs": 5}, "batch_size": 16, "top_k": 2, "report": False})
    assert rundir.prepare(run, same) is True


def test_a_finished_run_is_not_trained_again_without_overwrite(tmp_path):
    cfg = FinetuneConfig()
    run = _unfinished_run(tmp_path, cfg, finished="complete")
    with pytest.raises(TlkerasError, match=r"holds a finished run \(model.keras\)\. Use --overwrite .* `tlkeras export "):
        rundir.prepare(run, cfg)


def test_overwrite_removes_only_what_tlkeras_wrote(tmp_path):
    cfg = FinetuneConfig()
    run = _unfinished_run(tmp_path, cfg, finished="complete")
    (tmp_path / "my_notes.txt").write_text("keep me")
    (tmp_path / "tlkeras-cache-abc").mkdir()  # a cache spilled by a killed run
    assert rundir.prepare(run, cfg, overwrite=True) is False
    assert sorted(os.listdir(tmp_path)) == ["my_notes.txt"]


def test_resume_errors(tmp_path):
    with pytest.raises(TlkerasError, match=r"resume: '.*' holds no tlkeras run \(no config.yaml\) to continue"):
        rundir.prepare(str(tmp_path), FinetuneConfig(), resume=True)
    with pytest.raises(TlkerasError, match="resume and overwrite exclude each other"):
        rundir.prepare(str(tmp_path), FinetuneConfig(), resume=True, overwrite=True)
    # killed before the first epoch finished: nothing saved, the same command starts again
    run = _unfinished_run(tmp_path / "early", FinetuneConfig(), state=False)
    assert rundir.prepare(run, FinetuneConfig()) is False


def test_a_state_that_does_not_fit_the_model_is_explained(tmp_path, tiny_model):
    folder = str(tmp_path)
    RunCheckpointer(tiny_model, folder).save(tiny_model, epochs_done=1, finished=False)
    other = tlkeras.build_model("mobilenetv2", 3, image_size=32, weights=None,
                                backbone_options={"alpha": 0.35}, head={"hidden_units": [8]})
    with pytest.raises(TlkerasError, match=r"does not fit this model .* Start again with --overwrite"):
        RunCheckpointer(other, folder).load()
    (tmp_path / "resume.npz").write_bytes(b"not a zip")
    with pytest.raises(TlkerasError, match=r"cannot be read .* start again with --overwrite"):
        RunCheckpointer(tiny_model, folder).load()


# === The CLI ===


def test_cli_resume_uses_the_saved_config(tmp_path, monkeypatch):
    saved = FinetuneConfig.from_dict({"backbone": "mobilenetv2", "stage1": {"epochs": 7}, "output_dir": str(tmp_path)})
    saved.to_yaml(tmp_path / "config.yaml")
    calls = []
    def record(**kw):
        calls.append(kw)
        raise TlkerasError("recorded")

    monkeypatch.setattr("tlkeras.workflow.build_and_finetune", record)
    result = CliRunner().invoke(cli.main, ["train", "--resume", "--output-dir", str(tmp_path)])
    assert "recorded" in result.output
    assert calls and calls[0]["resume"] is True and calls[0]["overwrite"] is False
    assert calls[0]["config"].stage1.epochs == 7 and calls[0]["config"].backbone == "mobilenetv2"


def test_cli_ctrl_c_exits_130_with_the_resume_hint(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x").mkdir()  # the data folder must exist: paths are checked before the library is called

    def interrupted(**kw):
        raise Interrupted("interrupted: 3 finished epoch(s) are saved in runs/x/checkpoints; run the same command again")

    monkeypatch.setattr("tlkeras.workflow.build_and_finetune", interrupted)
    result = CliRunner().invoke(cli.main, ["train", "--data", "x"])
    assert result.exit_code == 130
    assert "Stopped: interrupted: 3 finished epoch(s) are saved" in result.output
    assert "Traceback" not in result.output


# === A kill after training: the report or the export is completed by the same command ===


@pytest.mark.slow
def test_a_kill_in_the_report_and_then_in_the_export_is_completed_by_the_same_command(tmp_path, image_folder, tiny):
    options = {**_options(image_folder, tiny, unfreeze="blocks:1", epochs=1), "stage1": {"epochs": 1},
               "export": True, "report": True}
    run = tmp_path / "run"

    def leftovers(folder):
        return [n for n in os.listdir(folder) if n.startswith(".tmp-")]

    killed = _train(options, run, ("report",))  # killed while the report writes its first picture
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert rundir.run_status(str(run)) == rundir.TRAINED  # model.keras and metrics.json written, not complete
    assert leftovers(run) and not os.path.exists(run / "report.html")
    trained = _weights(run)

    killed = _train(options, run, ("export",))  # the same command: completes the report, killed in the export
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert "holds a trained run whose report or export was not finished: completing it" in killed.stderr
    assert rundir.run_status(str(run)) == rundir.TRAINED
    assert not leftovers(run) and os.path.isfile(run / "report.html")
    assert leftovers(run / "export") and not os.path.isdir(run / "export" / "1")

    again = _train(options, run)  # the same command again
    assert again.returncode == 0, again.stderr[-3000:]
    assert "holds a trained run whose report or export was not finished: completing it" in again.stderr
    assert "removed what an interrupted run left" in again.stderr
    # the export is checked on the run's 6 real validation images, as an uninterrupted run's is
    assert "exported SavedModel version 1" in again.stderr and "checked on 6 images" in again.stderr
    assert rundir.run_status(str(run)) == rundir.COMPLETE
    assert not [n for folder in (run, run / "export") for n in leftovers(folder)]
    assert os.listdir(run / "export") == ["1"]
    assert _history(run)["epoch"] == [1, 2]  # nothing trained twice
    for x, y in zip(trained, _weights(run)):
        np.testing.assert_array_equal(y, x)
    assert os.path.isfile(run / "report.html")
    with pytest.raises(TlkerasError, match="holds a finished run"):  # the same command once more: in this process,
        tlkeras.build_and_finetune(verbose=0, **{**options, "output_dir": str(run)})  # refused before any work


def test_a_trained_run_goes_on_and_a_complete_one_is_refused(tmp_path):
    cfg = FinetuneConfig()
    assert rundir.prepare(_unfinished_run(tmp_path / "a", cfg, finished="trained"), cfg) is True
    run = _unfinished_run(tmp_path / "b", cfg, finished="complete")
    with pytest.raises(TlkerasError, match="holds a finished run"):
        rundir.prepare(run, cfg)
    (tmp_path / "b" / "run.json").write_text('{"status": "comp')  # cut short by a kill: redone
    assert rundir.run_status(run) == rundir.TRAINED


def test_a_run_that_never_finished_an_epoch_does_not_block_a_corrected_command(tmp_path):
    # e.g. a data path typo found after config.yaml was written: the fixed command just starts
    run = _unfinished_run(tmp_path, FinetuneConfig.from_dict({"data": "photoz"}), state=False)
    assert rundir.prepare(run, FinetuneConfig.from_dict({"data": "photos"})) is False
    with pytest.raises(TlkerasError, match="configured differently"):  # --resume still names the difference
        rundir.prepare(run, FinetuneConfig.from_dict({"data": "photos"}), resume=True)
