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
    assert "weights=None: the backbone starts from random weights" in proc.stderr
