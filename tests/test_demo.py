import os

import numpy as np
import pytest

from tlkeras import demo


def test_shipped_digits_are_the_real_dataset():
    images, labels = demo.load_digits()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert images.max() == 255 and images.min() == 0


def test_target_split_has_the_stated_images_per_class():
    _, labels = demo.load_digits()
    target = labels[labels >= 5]
    train, val, test = demo.split_target(target)
    assert np.bincount(target[train])[5:].tolist() == [demo.TRAIN_PER_CLASS] * 5
    assert np.bincount(target[val])[5:].tolist() == [demo.VAL_PER_CLASS] * 5
    assert len(set(train) | set(val) | set(test)) == len(target)


@pytest.mark.slow
def test_demo_transfer_beats_training_from_scratch_and_runs_again_in_the_same_folder(tmp_path, monkeypatch):
    """The README's first command, twice. The first run makes the demo's promise; the second finds the
    first's finished runs in its folders (which any other command refuses without --overwrite) and
    trains them again (here one epoch each, on 40 images per digit)."""
    import tlkeras
    from tlkeras.errors import TlkerasError

    lines = []
    result = demo.run_demo(str(tmp_path), echo=lines.append)
    # Measured here: source 0.94-0.98, transfer 0.74, scratch 0.44 on 746 test images.
    # 10 points is the margin we promise; the source model must be a real one.
    assert result.source_accuracy > 0.85
    assert result.transfer_accuracy > result.scratch_accuracy + 0.10
    assert result.test_count == 746
    assert os.path.isfile(os.path.join(result.export_dir, "saved_model.pb"))
    text = "\n".join(lines)
    assert "transfer (two stages)" in text and "from scratch" in text
    assert "classified through its serving_default signature" in text
    # one sample per digit, the count of right answers told, and where the report is
    samples = [line for line in lines if "_true_" in line and "->" in line]
    assert sorted(line.split("_true_")[1][0] for line in samples) == ["5", "6", "7", "8", "9"]
    right = sum(line.endswith(", right)") for line in samples)
    assert f": {right} of 5 right (test accuracy {result.transfer_accuracy:.3f})" in text
    assert any(line.strip() == f"report: {os.path.join(str(tmp_path), 'transfer', 'report.html')}" for line in lines)

    with pytest.raises(TlkerasError, match="holds a run with a different config"):
        tlkeras.build_and_finetune((np.zeros((4, 8, 8)), [0, 1, 0, 1]), output_dir=str(tmp_path / "scratch"))
    images, labels = demo.load_digits()
    keep = np.concatenate([np.flatnonzero(labels == d)[:40] for d in range(10)])
    monkeypatch.setattr(demo, "load_digits", lambda: (images[keep], labels[keep]))
    monkeypatch.setattr(demo, "SOURCE_EPOCHS", 1)
    monkeypatch.setattr(demo, "TRANSFER", {**demo.TRANSFER, "stage1": {"epochs": 1, "learning_rate": 1e-2},
                                           "stage2": {**demo.TRANSFER["stage2"], "epochs": 0}})
    again = demo.run_demo(str(tmp_path), echo=lambda line: None)
    assert os.path.isfile(os.path.join(again.export_dir, "saved_model.pb"))
    assert again.test_count == 5 * (40 - demo.TRAIN_PER_CLASS - demo.VAL_PER_CLASS)
    # the first run's served version stays; the new model is the next version
    assert os.path.basename(again.export_dir) == "2" and os.path.isfile(os.path.join(result.export_dir, "saved_model.pb"))
