"""Issue 15: what can be checked is checked before the run directory is written, and every failure a
user can cause is one line naming the file or value and what to do (--debug keeps the traceback)."""

import errno
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

import tlkeras
from tlkeras import cli


def _cli(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def _one_line(result, expected):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1 and expected in lines[0], result.output


TRAIN = ["train", "--backbone", "mobilenetv2", "--image-size", "32", "--set", "backbone_options.alpha=0.35",
         "--set", "stage1.epochs=1", "--set", "stage2.epochs=1", "--no-export"]


@pytest.mark.parametrize("extra, expected", [
    (["--data", "{root}/colourz", "--weights", "none"], "data: the path '{root}/colourz' does not exist."),
    (["--weights", "none", "--set", "stage2.unfreeze=block_99_add"],
     "stage2.unfreeze: the backbone has no layer 'block_99_add'. Did you mean 'block_9_add'"),
    (["--weights", "{root}/nope.weights.h5"], "weights: '{root}/nope.weights.h5' is neither 'imagenet', null"),
    (["--weights", "imagnet"], "weights: 'imagnet' is neither 'imagenet', null (random initialisation) nor an "
                               "existing weights file. Did you mean 'imagenet'?"),
    (["--weights", "none", "--set", "class_weight={reed: 2}"], "class_weight: 'reed' is not a class; classes are"),
    (["--weights", "none", "--set", "seed=99999999999999"], "seed: 99999999999999 is not valid: use an integer "
                                                            "from 0 to 4294967295."),
    (["--weights", "none", "--set", "batch_size=1e20"], "batch_size: '1e20' is not an integer."),
    (["--weights", "none", "--set", "backbone_options.alpha=abc"],
     "MobileNetV2 cannot be built with these settings (backbone_options {'alpha': 'abc'})"),
    (["--data", "{root}/data/red/000.png", "--weights", "none"], "data: '{root}/data/red/000.png' is a file; pass the "
                                                                 "folder that holds one subfolder of images per class"),
])
def test_a_mistake_is_one_line_before_the_run_directory_is_written(tmp_path, image_folder, extra, expected):
    shutil.copytree(image_folder, tmp_path / "data")
    extra = [e.replace("{root}", str(tmp_path)) for e in extra]
    args = TRAIN + (["--data", tmp_path / "data"] if "--data" not in extra else []) + extra
    result = _cli(*args, "--output-dir", tmp_path / "run")
    _one_line(result, expected.replace("{root}", str(tmp_path)))
    assert not os.path.exists(tmp_path / "run")  # nothing written, so the corrected command just runs


def test_output_dir_that_is_a_file(tmp_path, image_folder):
    (tmp_path / "taken").write_text("x")
    _one_line(_cli(*TRAIN, "--data", image_folder, "--weights", "none", "--output-dir", tmp_path / "taken"),
              f"output_dir '{tmp_path / 'taken'}' is a file, not a folder")


@pytest.fixture
def run_copy(tmp_path, trained_run):
    copy = tmp_path / "copy"
    shutil.copytree(trained_run.run_dir, copy)
    return copy


@pytest.mark.parametrize("damage, command, expected", [
    (("labels.txt", b"ab\xff\xfe\n"), "export", "labels.txt' is not UTF-8 text (byte 0xff at position 2)"),
    (("config.yaml", b"backbone: mob\xffilenetv2\n"), "export", "config.yaml' is not UTF-8 text (byte 0xff"),
    (("model.keras", b"PK\x03\x04 cut short"), "export", "model.keras' cannot be loaded: it is damaged or not a "
                                                         ".keras model file"),
    (("metrics.json", b'{\n  "split'), "export", "metrics.json' is damaged (not valid JSON: Unterminated string"),
    (("run.json", b'{"versions": '), "export", "run.json' is damaged (not valid JSON"),
    (("export/1/saved_model.pb", b"\x08\x01garbage"), "predict", "the SavedModel '{run}/export/1' is damaged and "
                                                                 "cannot be loaded"),
    (("export/1/variables/variables.data-00000-of-00001", b"short"), "predict", "the SavedModel '{run}/export/1' is "
                                                                                "damaged"),
])
def test_a_damaged_file_of_a_run_is_one_line_naming_it(run_copy, image_folder, damage, command, expected):
    name, data = damage
    (run_copy / name).write_bytes(data)
    args = ["export", run_copy] if command == "export" else ["predict", run_copy / "export" / "1",
                                                              os.path.join(image_folder, "red", "000.png")]
    _one_line(_cli(*args), expected.format(run=run_copy))


@pytest.mark.parametrize("suffix, says", [(".onnx", "INVALID_PROTOBUF"), (".tflite", "not a valid Flatbuffer")])
def test_a_damaged_onnx_or_tflite_file_is_one_line_naming_it(tmp_path, image_folder, suffix, says):
    damaged = tmp_path / f"model{suffix}"
    damaged.write_bytes(b"\x08\x01 not a model at all" * 40)
    (tmp_path / "labels.txt").write_text("red\ngreen\nblue\n")
    result = _cli("predict", damaged, os.path.join(image_folder, "red", "000.png"))
    _one_line(result, f"'{damaged}' cannot be read as a {suffix} model (")
    assert says in result.output and f"tlkeras export RUN --format {suffix[1:]}" in result.output


def test_a_damaged_resume_state_is_one_line(tmp_path, tiny_model):
    from tlkeras.errors import TlkerasError
    from tlkeras.resume import RunCheckpointer

    checkpointer = RunCheckpointer(tiny_model, str(tmp_path))
    np.savez(checkpointer.path, w0=np.zeros(3))  # no state entry
    with pytest.raises(TlkerasError, match=r"the resume state .* is damaged \(KeyError: 'state'\); start again with "
                                           r"--overwrite"):
        checkpointer.load()
    np.savez(checkpointer.path, state=np.array("{not json"))
    with pytest.raises(TlkerasError, match=r"is damaged \(JSONDecodeError"):
        checkpointer.load()


def test_disk_full_and_read_only_are_one_line(run_copy, monkeypatch):
    from tlkeras.export import saved_model

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(run_copy / "export" / ".tmp-export-1-x"))

    monkeypatch.setattr(saved_model.tf.saved_model, "save", full)
    before = sorted(os.listdir(run_copy / "export"))
    _one_line(_cli("export", run_copy), f"could not write '{run_copy}/export/.tmp-export-1-x': No space left on "
                                        "device. Free some space and run the same command again")
    assert sorted(os.listdir(run_copy / "export")) == before  # nothing half-written was published

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(run_copy / "export"))

    monkeypatch.setattr(saved_model.tf.saved_model, "save", read_only)
    _one_line(_cli("export", run_copy), "Read-only file system. That file system is read-only: choose another")
    result = CliRunner().invoke(cli.main, ["--debug", "export", str(run_copy)])
    assert isinstance(result.exception, OSError)  # --debug keeps the traceback


def test_a_full_disk_names_the_file_being_written(tmp_path):
    # A full disk found by write() or close() raises OSError without a file name (a 3 MB disk filled
    # by a run's resume.npz did): the message names the file being written, not a bare "could not write".
    from tlkeras.atomic import atomic_path

    target = tmp_path / "checkpoints" / "resume.npz"
    with pytest.raises(OSError) as caught:
        with atomic_path(target, suffix=".npz") as tmp, open(tmp, "wb"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert caught.value.filename == str(target)
    assert cli._os_error(caught.value).startswith(f"could not write '{target}': No space left on device. Free some")
    assert os.listdir(target.parent) == []  # the temporary file is gone


def test_a_disk_too_full_for_the_best_checkpoint_is_refused_before_hdf5_writes(tmp_path, tiny_model, monkeypatch):
    # HDF5 does not survive a full disk: on a 1 MB tmpfs `tlkeras train` segfaulted in h5py while writing
    # best.weights.h5, on a 2 MB one it ended in h5py's RuntimeError. The free space is checked first.
    import shutil

    from tlkeras.training.callbacks import BestCheckpoint

    path = tmp_path / "checkpoints" / "best.weights.h5"
    path.parent.mkdir()
    best = BestCheckpoint(tiny_model, str(path), "loss", min_interval=0)
    best.set_model(tiny_model)
    free = 64 << 10
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(1 << 30, (1 << 30) - free, free))
    with pytest.raises(OSError) as caught:
        best.on_epoch_end(0, {"loss": 1.0})
    assert caught.value.filename == str(path)
    assert cli._os_error(caught.value).startswith(f"could not write '{path}': No space left on device (needs about")
    assert os.listdir(path.parent) == []  # HDF5 never started
    monkeypatch.undo()
    best.on_epoch_end(1, {"loss": 0.5})  # with room, the same checkpoint is written
    assert os.listdir(path.parent) == ["best.weights.h5"]


def test_predict_takes_a_keras_file_and_a_run_and_tlkeras_predict_is_the_same(trained_run, image_folder):
    image = os.path.join(image_folder, "red", "000.png")
    from_keras = _cli("predict", os.path.join(trained_run.run_dir, "model.keras"), image, "--format", "json")
    from_export = _cli("predict", trained_run.export_dir, image, "--format", "json")
    assert from_keras.exit_code == 0, from_keras.output
    assert from_keras.output == from_export.output
    rows = tlkeras.predict(trained_run.model, image, top_k=2).rows
    assert rows[0]["classes"] == tlkeras.predict(trained_run.run_dir, [image], top_k=2).rows[0]["classes"]
    np.testing.assert_allclose(rows[0]["scores"], tlkeras.predict(trained_run.export_dir, image, top_k=2).rows[0]["scores"],
                               atol=1e-5)


def test_a_folder_in_export_that_is_not_a_version_is_left_alone(run_copy):
    (run_copy / "export" / "notes").mkdir()
    versions = sorted(int(n) for n in os.listdir(run_copy / "export") if n.isdigit())
    result = _cli("export", run_copy)
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(run_copy / "export")) == sorted([*map(str, versions), str(max(versions) + 1), "notes"])
