import os
import subprocess
import sys

import pytest


EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")


@pytest.mark.slow
def test_building_blocks_example_runs_and_its_export_answers(tmp_path):
    proc = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, "building_blocks.py"), str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = dict(line.split(":", 1) for line in proc.stdout.splitlines() if ":" in line)
    assert lines["stage of each epoch"].strip() == "[1, 1, 1, 2, 2, 2]"
    assert os.path.isfile(os.path.join(tmp_path, "export", "1", "saved_model.pb"))
    assert "->" in proc.stdout


@pytest.mark.slow
def test_folder_example_runs_on_a_folder(tmp_path, image_folder):
    proc = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, "finetune_folder.py"), image_folder, "--backbone", "mobilenetv2",
         "--weights", "none", "--image-size", "32", "--epochs", "1", "--output-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"TF Serving model:   {tmp_path}/export/1" in proc.stdout
    assert "weights: null (random initialisation): the backbone starts from random weights" in proc.stderr


@pytest.mark.slow
def test_two_worker_example_trains_on_one_machine(tmp_path, image_folder, backbone_weights):
    out = tmp_path / "run"
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    proc = subprocess.run(
        ["bash", os.path.join(EXAMPLES, "multi_worker_localhost.sh"), image_folder, str(out), "--backbone",
         "mobilenetv2", "--weights", backbone_weights, "--image-size", "32", "--batch-size", "4",
         "--set", "backbone_options.alpha=0.35", "--set", "stage1.epochs=1", "--set", "stage2.epochs=1",
         "--set", "report=false", "--set", "tensorboard=false"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    logs = [(tmp_path / f"run.worker{i}.log").read_text() for i in (0, 1)]
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + logs[0][-2000:] + logs[1][-2000:]
    assert "2 replica(s) in sync (TF_CONFIG names 2 machines)" in logs[0]
    assert "global batch 8 = batch_size 4 x 2 replicas" in logs[1]
    assert f"SavedModel:     {out}/export/1" in proc.stdout
    assert os.path.isfile(out / "export" / "1" / "saved_model.pb")
