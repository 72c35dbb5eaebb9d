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
def test_demo_tells_its_story_checks_its_promise_and_runs_again_in_the_same_folder(tmp_path, monkeypatch):
    """The demo on 40 images per digit and an epoch per stage (the full demo is the README's first command, which CI
    runs and which fails when the demo does not keep its promise: check_promise's doctest). The first run tells its
    story; the second finds the first's finished runs in its folders (which any other command refuses without
    --overwrite), trains them again, and fails with one line when its promise is not kept - after its export landed."""
    import tlkeras
    from tlkeras.errors import TlkerasError, TrainingError

    images, labels = demo.load_digits()
    keep = np.concatenate([np.flatnonzero(labels == d)[:40] for d in range(10)])
    monkeypatch.setattr(demo, "load_digits", lambda: (images[keep], labels[keep]))
    monkeypatch.setattr(demo, "SOURCE_EPOCHS", 1)
    monkeypatch.setattr(demo, "TRANSFER", {**demo.TRANSFER, "stage1": {"epochs": 1, "learning_rate": 1e-2},
                                           "stage2": {**demo.TRANSFER["stage2"], "epochs": 1}})
    monkeypatch.setattr(demo, "SOURCE_AT_LEAST", 0.0)
    monkeypatch.setattr(demo, "MARGIN", -1.0)  # an epoch each cannot make the real promise; the story is checked here

    lines = []
    result = demo.run_demo(str(tmp_path), echo=lines.append)
    assert result.test_count == 5 * (40 - demo.TRAIN_PER_CLASS - demo.VAL_PER_CLASS)
    assert os.path.isfile(os.path.join(result.export_dir, "saved_model.pb"))
    text = "\n".join(lines)
    assert f"transfer (two stages){result.transfer_accuracy:>21.3f}" in text
    assert f"from scratch{result.scratch_accuracy:>30.3f}" in text
    assert "classified through its serving_default signature" in text
    # one sample per digit, the count of right answers told, and where the report is
    samples = [line for line in lines if "_true_" in line and "->" in line]
    assert sorted(line.split("_true_")[1][0] for line in samples) == ["5", "6", "7", "8", "9"]
    right = sum(line.endswith(", right)") for line in samples)
    assert f": {right} of 5 right (test accuracy {result.transfer_accuracy:.3f})" in text
    assert any(line.strip() == f"report: {os.path.join(str(tmp_path), 'transfer', 'report.html')}" for line in lines)
    assert lines[-1] == (f"promise kept: transfer {result.transfer_accuracy - result.scratch_accuracy:+.3f} over "
                         f"training from scratch (at least +-1.00 promised), source model {result.source_accuracy:.3f}")

    with pytest.raises(TlkerasError, match="holds a run with a different config"):
        tlkeras.build_and_finetune((np.zeros((4, 8, 8)), [0, 1, 0, 1]), output_dir=str(tmp_path / "scratch"))
    monkeypatch.setattr(demo, "MARGIN", 1.0)  # no run can beat scratch by 100 points
    with pytest.raises(TrainingError, match=r"^the demo did not keep its promise: transfer \d\.\d{3} is not 100 points "
                                            r"above training from scratch"):
        demo.run_demo(str(tmp_path), echo=lambda line: None)
    # the first run's served version stays; the new model is the next version
    assert os.path.isfile(os.path.join(result.export_dir, "saved_model.pb"))
    assert os.path.isfile(os.path.join(os.path.dirname(result.export_dir), "2", "saved_model.pb"))
