"""The CLI answers without TensorFlow when no model is needed, and keeps TensorFlow's C++ start-up
lines off stderr when one is (unless -v or --debug). Each case runs in a fresh interpreter, since
what matters is what gets imported."""

import json
import os
import subprocess
import sys

import pytest

# Runs the CLI in-process and reports whether TensorFlow (or Keras) was imported, and what it said.
_PROBE = r"""
import json, sys
from click.testing import CliRunner
from tlkeras.cli import main
result = CliRunner().invoke(main, sys.argv[1:])
print(json.dumps({"code": result.exit_code, "output": result.output,
                  "tensorflow": "tensorflow" in sys.modules, "keras": "keras" in sys.modules}))
"""


def _probe(*args, cwd=None) -> dict:
    done = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [["--help"], ["backbones"], ["train", "--help"], ["predict", "--help"],
                                  ["export", "--help"], ["rank", "--help"], ["tune", "--help"], ["--version"]])
def test_help_and_listings_do_not_import_tensorflow(args):
    found = _probe(*args)
    assert found["code"] == 0, found["output"]
    assert not found["tensorflow"] and not found["keras"]
    assert found["output"].strip()


@pytest.mark.parametrize("args, message", [
    (["train", "--set", "stage1.epoch=3"], "Unknown config key 'stage1.epoch'. Did you mean 'stage1.epochs'?"),
    (["train", "--data", "no/such/folder"], "data: the path 'no/such/folder' does not exist."),
    (["train", "--data", ".", "--val-data", "missing"], "val_data: the path 'missing' does not exist."),
    (["train", "--data", ".", "--backbone", "mobilenet_v9"], "Unknown backbone 'mobilenet_v9'. Did you mean"),
    (["train", "--data", ".", "--weights", "imagnet"], "Did you mean 'imagenet'?"),
    (["train", "--data", ".", "--backbone", "mobilenetv2", "--image-size", "16"],
     "image_size: [16, 16] is below the minimum of MobileNetV2"),
    (["train", "--data", ".", "--backbone", "no_such_file.keras"],
     "backbone: the model file 'no_such_file.keras' does not exist."),
    (["train", "--data", ".", "--backbone", "hub:no/such/module/folder"], "is neither a URL nor an existing folder"),
    (["train", "--resume"], "resume: name the run to continue with output_dir"),
    (["find-lr", "--data", "no/such/folder"], "data: the path 'no/such/folder' does not exist."),
    (["rank", "--data", "no/such/folder", "--backbones", "mobilenetv2"], "data: the path 'no/such/folder' does not exist."),
    (["rank", "--data", ".", "--backbones", " , "], "backbone candidates: ' , ' names no backbone"),
    (["train", "--data", ".", "--backbone", "auto:a,a"], "backbone candidates: a listed twice"),
    (["tune", "--data", ".", "--trials", "0"], "n_trials: 0 is not valid: use a whole number of trials, at least 1."),
    (["tune", "--data", ".", "--trials", "3", "--folds", "1"], "folds: 1 is not valid: use 2 or more"),
    (["tune", "--data", "no/such/folder", "--trials", "3"], "data: the path 'no/such/folder' does not exist."),
])
def test_config_and_path_errors_are_one_line_without_tensorflow(tmp_path, args, message):
    found = _probe(*args, cwd=tmp_path)
    assert found["code"] == 1
    assert message in found["output"]
    assert len(found["output"].strip().splitlines()) == 1, found["output"]
    assert not found["tensorflow"], "TensorFlow was imported to report a config error"
    assert os.listdir(tmp_path) == [], "a refused command left files behind"


def test_output_dir_that_is_a_file_is_refused_before_tensorflow(tmp_path):
    (tmp_path / "taken").write_text("x")
    found = _probe("train", "--data", ".", "--output-dir", "taken", cwd=tmp_path)
    assert "output_dir 'taken' is a file, not a folder" in found["output"]
    assert not found["tensorflow"]


def test_importing_tlkeras_imports_no_tensorflow_until_a_name_needs_it():
    code = ("import sys, tlkeras; before = 'tensorflow' in sys.modules; "
            "import tlkeras.predict; assert callable(tlkeras.predict), tlkeras.predict; "
            "fn = tlkeras.build_and_finetune; print(before, 'tensorflow' in sys.modules, fn.__name__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "True", "build_and_finetune"]


def test_a_run_s_model_loads_in_a_fresh_process_with_tlkeras_load_model(trained_run):
    path = os.path.join(trained_run.run_dir, "model.keras")
    code = ("import sys, tlkeras; m = tlkeras.load_model(sys.argv[1]); "
            "from tlkeras.model import model_info; print(model_info(m).class_names)")
    done = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(list(trained_run.class_names))


# === TensorFlow's start-up lines ===

_MARKERS = ("oneDNN custom operations", "cudart_stub", "cuInit", "absl::InitializeLog", "cpu_feature_guard")


def _stderr_of(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stderr


def test_tensorflow_startup_lines_are_hidden_and_other_lines_kept():
    plain = _stderr_of("from tlkeras._logging import start_tensorflow; start_tensorflow()")
    if not any(marker in plain for marker in _MARKERS):
        pytest.skip("this TensorFlow prints no start-up lines here: nothing to hide")
    hidden = _stderr_of(
        "import os, sys\n"
        "from tlkeras._logging import start_tensorflow, tensorflow_startup_hidden\n"
        "with tensorflow_startup_hidden():\n"
        "    start_tensorflow()\n"
        "    os.write(2, b'a line of our own\\n')\n"
        "    print('a Python warning', file=sys.stderr)\n"
    )
    assert not [marker for marker in _MARKERS if marker in hidden], hidden
    assert hidden.splitlines() == ["a line of our own", "a Python warning"]


def test_an_import_failure_still_shows_its_lines():
    hidden = _stderr_of(
        "import os\n"
        "from tlkeras._logging import tensorflow_startup_hidden\n"
        "try:\n"
        "    with tensorflow_startup_hidden():\n"
        "        os.write(2, b'I0000 cudart_stub.cc:31] Could not find cuda drivers\\nthe real reason\\n')\n"
        "        raise ImportError('broken')\n"
        "except ImportError:\n"
        "    pass\n"
    )
    assert hidden.splitlines() == ["the real reason"]


def test_the_cli_hides_tensorflow_startup_lines_and_v_shows_them(tmp_path):
    # predict on an empty folder: TensorFlow is started, then the command stops with one line
    (tmp_path / "empty").mkdir()

    def run(*flags):
        done = subprocess.run([sys.executable, "-m", "tlkeras.cli", *flags, "predict", str(tmp_path / "empty"), "x.png"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 1, done.stderr[-2000:]
        return done.stderr

    shown = run("-v")
    if not any(marker in shown for marker in _MARKERS):
        pytest.skip("this TensorFlow prints no start-up lines here: nothing to hide")
    quiet = run()
    assert not [marker for marker in _MARKERS if marker in quiet], quiet
    assert quiet.strip().splitlines()[-1].startswith("Error: ")  # the command's own line is still there
    assert len(quiet.strip().splitlines()) == 1, quiet
