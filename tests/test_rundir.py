"""The run directory's promises: one run per folder, the served versions kept on --overwrite,
leftovers of killed runs removed, files on disk before they are published."""

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from tlkeras import cli, rundir
from tlkeras.config import FinetuneConfig
from tlkeras.errors import TlkerasError
from tlkeras.export.saved_model import next_version


def _finished_run(path, versions=()):
    os.makedirs(path / "checkpoints", exist_ok=True)
    FinetuneConfig().to_yaml(path / "config.yaml")
    for name in ("model.keras", "metrics.json", "history.json", "report.html"):
        (path / name).write_text("x")
    (path / "run.json").write_text('{"status": "complete"}')
    for version in versions:
        os.makedirs(path / "export" / str(version))
        (path / "export" / str(version) / "saved_model.pb").write_text(f"model {version}")
    return str(path)


def test_overwrite_keeps_the_served_versions_and_counts_on(tmp_path, caplog):
    run = _finished_run(tmp_path, versions=(1, 2))
    with caplog.at_level("INFO", logger="tlkeras"):
        assert rundir.prepare(run, FinetuneConfig(), overwrite=True) is False
    assert sorted(os.listdir(tmp_path)) == ["export"]
    assert (tmp_path / "export" / "1" / "saved_model.pb").read_text() == "model 1"
    assert next_version(str(tmp_path / "export")) == 3
    assert "kept export/ (versions 1, 2): the new model becomes version 3" in caplog.text


def test_a_second_run_on_a_locked_folder_gets_one_line_and_writes_nothing(tmp_path, image_folder):
    out = tmp_path / "run"
    out.mkdir()
    with rundir.lock(str(out)):
        result = CliRunner().invoke(cli.main, ["train", "--data", image_folder, "--backbone", "mobilenetv2",
                                               "--weights", "none", "--image-size", "32", "--output-dir", str(out)])
    assert result.exit_code == 1
    assert f"Error: output_dir '{out}' is in use by another tlkeras run (it holds the folder's lock)." in result.output
    assert "Traceback" not in result.output
    assert os.listdir(out) == []


def test_a_killed_process_leaves_no_stuck_lock(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from tlkeras import rundir\n"
                               "with rundir.lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(600)",
         str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(TlkerasError, match="in use by another tlkeras run"):
            with rundir.lock(str(tmp_path)):
                pass
    finally:
        holder.kill()
        holder.wait()
    with rundir.lock(str(tmp_path)):  # the OS released it with the process
        pass


def test_leftovers_of_dead_runs_are_removed_and_a_live_exports_are_kept(tmp_path):
    run = _finished_run(tmp_path, versions=(1,))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        made = {
            f".tmp-{dead_pid}-a1.keras": "", f".tmp-{dead_pid}-b2.png": "", "checkpoints/.tmp-x7.npz": "",
            f"export/.tmp-export-{dead_pid}-q/": "", f"export/.tmp-export-{live.pid}-r/": "",
            f"tlkeras-cache-{dead_pid}/": "",
        }
        for name in made:
            path = tmp_path / name.rstrip("/")
            path.mkdir() if name.endswith("/") else path.write_text("partial")
        rundir.prepare(run, FinetuneConfig(), overwrite=True)
        assert sorted(os.listdir(tmp_path / "export")) == [f".tmp-export-{live.pid}-r", "1"]
        assert sorted(os.listdir(tmp_path)) == ["export"]
    finally:
        live.kill()
        live.wait()


def test_files_and_their_folder_are_synced_around_the_rename(tmp_path, monkeypatch):
    from tlkeras import atomic

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
                        or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", b)) or real_replace(a, b))
    target = tmp_path / "history.json"
    atomic.write_json_atomic(target, {"epoch": [1]})
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"]
    assert os.path.basename(events[0][1]).startswith(f".tmp-{os.getpid()}-")  # the new file, before it is published
    assert events[2][1] == str(tmp_path)  # the folder's entry, after


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads file names of descriptors from /proc")
def test_an_export_version_is_on_disk_before_it_is_published(tmp_path, monkeypatch, tiny_model):
    from tlkeras.export.saved_model import export_saved_model

    synced, real_fsync, real_rename = [], os.fsync, os.rename
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    renamed = []
    monkeypatch.setattr(os, "rename", lambda a, b: renamed.append(len(synced)) or real_rename(a, b))
    export_saved_model(tiny_model, str(tmp_path), ["a", "b", "c"])
    before = synced[:renamed[0]]
    assert any(p.endswith("/model/saved_model.pb") and ".tmp-export-" in p for p in before)
    assert any(p.endswith("variables.data-00000-of-00001") for p in before)
    assert synced[renamed[0]:] == [str(tmp_path)]
