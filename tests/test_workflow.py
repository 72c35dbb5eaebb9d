import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

import tlkeras
from conftest import TINY, write_image_folder
from tlkeras.errors import BackboneError, ConfigError


def test_run_directory_holds_everything_the_run_made(trained_run):
    run = trained_run.run_dir
    for name in ["config.yaml", "history.json", "metrics.json", "labels.txt", "model.keras",
                 "checkpoints/best.weights.h5", "stage2_trainable_layers.txt"]:
        assert os.path.getsize(os.path.join(run, name)) > 0, name
    assert trained_run.export_dir == os.path.join(run, "export", "1")
    with open(os.path.join(run, "config.yaml")) as f:
        saved = yaml.safe_load(f)
    assert saved["backbone"] == "mobilenetv2" and saved["stage2"]["unfreeze"] == "blocks:2"
    assert saved == trained_run.config.to_dict()
    with open(os.path.join(run, "labels.txt")) as f:
        assert f.read().splitlines() == ["blue", "green", "red"]


def test_result_reports_history_metrics_and_classes(trained_run):
    assert trained_run.class_names == ["blue", "green", "red"]
    assert trained_run.history["epoch"] == [1, 2, 3]
    assert trained_run.history["stage"] == [1, 1, 2]
    m = trained_run.metrics
    assert m["split"] == "val" and m["count"] == 6  # 20% of 8 per class, stratified: 2 x 3
    assert 0.0 <= m["accuracy"] <= 1.0
    with open(os.path.join(trained_run.run_dir, "metrics.json")) as f:
        assert json.load(f) == m


def test_the_runs_metrics_are_those_of_the_whole_saved_model_on_the_validation_images(trained_run):
    """The run evaluates its cached part on the cached validation activations (stage 2 trained above a frozen,
    cached bottom); `evaluate_run` runs model.keras, all of it, on the validation images decoded again."""
    from tlkeras.evaluate import evaluate_run

    again = evaluate_run(trained_run.run_dir)
    assert again["count"] == trained_run.metrics["count"] == 6
    assert again["accuracy"] == trained_run.metrics["accuracy"]
    assert again["loss"] == pytest.approx(trained_run.metrics["loss"], abs=1e-4)


def test_saved_model_keras_reloads_in_safe_mode_and_predicts_the_same(trained_run):
    reloaded = keras.models.load_model(os.path.join(trained_run.run_dir, "model.keras"), safe_mode=True)
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), trained_run.model.predict(x, verbose=0), atol=1e-6)
    assert reloaded.get_layer("preprocess").backbone_name == "mobilenetv2"


def test_run_with_a_truncated_jpeg_trains_and_lists_the_skipped_file(tmp_path, backbone_weights):
    data = write_image_folder(tmp_path / "data", per_class=4)
    broken = os.path.join(data, "green", "broken.jpg")
    jpeg = tf.io.encode_jpeg(np.zeros((40, 40, 3), np.uint8)).numpy()
    with open(broken, "wb") as f:
        f.write(jpeg[: len(jpeg) // 3])
    result = tlkeras.build_and_finetune(
        data, **TINY, weights=backbone_weights, batch_size=4, stage1={"epochs": 1}, stage2={"epochs": 1, "unfreeze": 2},
        output_dir=str(tmp_path / "run"), export=False, verbose=0,
    )
    assert result.export_dir is None
    assert [p for p, _ in result.skipped_files] == [broken]
    with open(tmp_path / "run" / "skipped_files.txt") as f:
        line = f.read().splitlines()
    assert len(line) == 1 and line[0].startswith(broken + "\t")
    assert result.history["epoch"] == [1, 2]


def test_config_file_and_keyword_overrides(tmp_path, image_folder, backbone_weights):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        **TINY, "data": image_folder, "weights": backbone_weights, "batch_size": 8,
        "stage1": {"epochs": 1}, "stage2": {"epochs": 0}, "export": False,
    }))
    result = tlkeras.build_and_finetune(config=str(config), stage1={"epochs": 2}, output_dir=str(tmp_path / "r"), verbose=0)
    assert result.history["stage"] == [1, 1]  # the keyword won over the file
    assert result.config.batch_size == 8  # the file won over the default


def test_a_run_sweeps_all_objects_rarely_and_leaves_the_collector_as_it_found_it(tmp_path, monkeypatch, image_folder,
                                                                                 tiny):
    import gc

    import tlkeras.workflow

    seen = []

    class Thresholds(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(gc.get_threshold())

    before = gc.get_threshold()
    try:
        gc.set_threshold(500, 7, 3)
        tlkeras.build_and_finetune(image_folder, **tiny, stage1={"epochs": 1}, stage2={"epochs": 0}, export=False,
                                   output_dir=str(tmp_path / "r"), verbose=0, callbacks=[Thresholds()])
        assert seen == [(500, 7, tlkeras.runtime.FULL_COLLECTION_EVERY)]  # the young generations as the user set them
        assert gc.get_threshold() == (500, 7, 3)

        def fails(*args, **kwargs):
            raise ValueError("broken")

        monkeypatch.setattr(tlkeras.workflow, "_finetune", fails)
        with pytest.raises(ValueError, match="broken"):
            tlkeras.build_and_finetune(image_folder, **tiny, output_dir=str(tmp_path / "r2"), verbose=0)
        assert gc.get_threshold() == (500, 7, 3)
    finally:
        gc.set_threshold(*before)


def test_a_keras_applications_run_trains_the_top_half_of_its_backbone_unless_told(tmp_path, image_folder, tiny,
                                                                                   caplog):
    from tlkeras import freezing
    from tlkeras.backbones import resolve
    from tlkeras.config import FinetuneConfig, with_backbone_defaults

    with caplog.at_level("INFO", logger="tlkeras"):
        result = tlkeras.build_and_finetune(image_folder, **tiny, stage1={"epochs": 1}, stage2={"epochs": 1},
                                            export=False, output_dir=str(tmp_path / "r"), verbose=0)
    assert "defaults for MobileNetV2: stage2.unfreeze 0.5 (measured: benchmarks/RESULTS.md" in caplog.text
    assert result.config.stage2.unfreeze == 0.5
    with open(os.path.join(result.run_dir, "stage2_trainable_layers.txt"), encoding="utf-8") as f:
        trained = f.read().split()
    model = tlkeras.build_model(TINY["backbone"], 3, image_size=TINY["image_size"], weights=None,
                                backbone_options=TINY["backbone_options"])
    everything = freezing.unfreeze(model, "all").layers
    assert trained == freezing.unfreeze(model, 0.5).layers and 0 < len(trained) < len(everything)
    # a value the user gives is kept
    cfg = FinetuneConfig.from_dict({"stage2": {"unfreeze": "all"}})
    assert with_backbone_defaults(cfg, resolve("mobilenetv2")).stage2.unfreeze == "all"


def test_bad_options_fail_before_any_training(tmp_path):
    with pytest.raises(ConfigError, match=r"Unknown config key 'epochs'"):
        tlkeras.build_and_finetune(str(tmp_path), epochs=3)
    with pytest.raises(BackboneError, match=r"Unknown backbone 'effnet'"):
        tlkeras.build_and_finetune(str(tmp_path), backbone="effnet", output_dir=str(tmp_path / "r"))
    assert not os.path.exists(tmp_path / "r")


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_run_trains_cached_and_exports(tmp_path, image_folder, backbone_weights, policy):
    result = tlkeras.build_and_finetune(
        image_folder, **TINY, weights=backbone_weights, batch_size=8, mixed_precision=policy,
        stage1={"epochs": 1, "learning_rate": 1e-2}, stage2={"epochs": 1, "unfreeze": "blocks:1"},
        output_dir=str(tmp_path), verbose=0,
    )
    compute = {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}[policy]
    assert result.model.get_layer("head_pool").compute_dtype == compute
    assert result.model.get_layer("predictions").compute_dtype == "float32"
    assert result.history.cache_plan.stage1 and result.history.cache_plan.stage2
    assert np.isfinite(result.history["loss"]).all()
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after the build
    assert os.path.isfile(os.path.join(result.export_dir, "saved_model.pb"))  # and the export check passed


def test_out_of_memory_is_one_line_that_says_what_to_shrink(tmp_path, monkeypatch, image_folder, tiny):
    import tensorflow as tf

    import tlkeras.workflow
    from tlkeras.errors import TrainingError

    def exhausted(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[32,112,112,96]")

    monkeypatch.setattr(tlkeras.workflow, "_finetune", exhausted)
    with pytest.raises(TrainingError, match=r"out of memory while training \(OOM when allocating tensor with "
                                            r"shape\[32,112,112,96\]\): use a smaller batch_size \(now 8\) or "
                                            r"image_size \(now 32x32\), mixed_precision"):
        tlkeras.build_and_finetune(image_folder, **tiny, output_dir=str(tmp_path / "r"), verbose=0)
