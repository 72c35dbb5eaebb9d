"""Feature and activation caching: the same training, less work. Correctness only, no timings."""

import logging
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tlkeras
from conftest import COLORS, TINY, make_image
from tlkeras import caching, freezing
from tlkeras.training import finetune


def _arrays(n_per_class=8, seed=0):
    rng = np.random.default_rng(seed)
    colors = list(COLORS.values())
    x = np.stack([make_image(rng, colors[i % 3], (32, 32)) for i in range(3 * n_per_class)]).astype("float32")
    return x, np.arange(len(x)) % 3


def _ds(x, y, shuffle=True):
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(x), seed=3, reshuffle_each_iteration=True)
    return ds.batch(6)


def _model(weights, dropout=0.0):
    keras.utils.set_random_seed(0)
    return tlkeras.build_model("mobilenetv2", 3, image_size=32, weights=weights,
                               backbone_options=TINY["backbone_options"], head={"dropout": dropout})


def _weights(model):
    return {f"{layer.name}/{w.name}": w.numpy().copy()
            for layer in [*freezing.backbone_layers(model), *model.layers] if layer.name != "backbone"
            for w in layer.weights}


def test_cached_and_uncached_stage1_give_the_same_head(backbone_weights):
    """Full-batch steps, so both paths see the same batches whatever the order: the head must
    end up the same, up to float rounding of features computed in different batch sizes."""
    x, y = _arrays()
    results = {}
    for setting in (True, False):
        model = _model(backbone_weights)
        train = tf.data.Dataset.from_tensor_slices((x, y)).batch(len(x))
        history = finetune(model, train, _ds(x, y, shuffle=False), stage1={"epochs": 4, "learning_rate": 1e-2},
                           stage2={"epochs": 0}, cache_features=setting, inputs_random=False, verbose=0)
        assert history.cache_plan.stage1 is setting
        results[setting] = (model.predict(x, verbose=0), history)
    cached, uncached = results[True], results[False]
    np.testing.assert_allclose(cached[0], uncached[0], atol=1e-4)
    np.testing.assert_allclose(cached[1]["loss"], uncached[1]["loss"], rtol=1e-4)
    np.testing.assert_allclose(cached[1]["val_loss"], uncached[1]["val_loss"], rtol=1e-4)
    assert np.ptp(cached[0], axis=0).max() > 1e-2  # the head learned something: the check is not vacuous


@pytest.mark.parametrize("unfreeze", ["blocks:2", "block_15_depthwise"])
def test_boundary_cached_stage2_changes_the_same_weights_and_the_full_model_agrees(backbone_weights, unfreeze):
    x, y = _arrays()
    changed, models = {}, {}
    for setting in (True, False):
        model = _model(backbone_weights)
        finetune(model, _ds(x, y), stage1={"epochs": 1, "learning_rate": 1e-2}, stage2={"epochs": 0},
                 cache_features=setting, inputs_random=False, verbose=0)
        before = _weights(model)
        history = finetune(model, _ds(x, y), _ds(x, y, False), stage1={"epochs": 0},
                           stage2={"epochs": 2, "unfreeze": unfreeze, "learning_rate": 1e-3},
                           cache_features=setting, inputs_random=False, verbose=0)
        assert history.cache_plan.stage2 is setting
        after = _weights(model)
        changed[setting] = {k for k in before if not np.array_equal(before[k], after[k])}
        models[setting] = model
    assert changed[True] == changed[False]
    assert any(k.startswith("block_16_project/") for k in changed[True])
    assert not any("moving_" in k for k in changed[True])

    # the partial model that trained and the full model that is exported answer alike
    model = models[True]
    cut = freezing.unfreeze(model, unfreeze).cut_layer
    extract, top, crossing = caching.split_at_cut(model, cut)
    if unfreeze == "block_15_depthwise":
        assert len(crossing) == 2  # the expand output and the residual branch cross the cut
    # float rounding only (two graphs split differently); a weight out of place moves them by 1e-2 or more
    np.testing.assert_allclose(top.predict(extract(x), verbose=0), model.predict(x, verbose=0), atol=1e-4)


def test_cache_features_false_still_trains(backbone_weights):
    x, y = _arrays(4)
    model = _model(backbone_weights)
    before = model.get_layer("predictions").kernel.numpy().copy()
    history = finetune(model, _ds(x, y), stage1={"epochs": 1}, stage2={"epochs": 1, "unfreeze": 2},
                       cache_features=False, verbose=0)
    assert not history.cache_plan.stage1 and not history.cache_plan.stage2
    assert history["stage"] == [1, 2]
    assert not np.array_equal(before, model.get_layer("predictions").kernel.numpy())


def test_auto_with_augmentation_runs_uncached_and_says_why(backbone_weights, caplog):
    x, y = _arrays(4)
    augmenter = tlkeras.data.augment.build_augmenter(tlkeras.config.AugmentConfig(flip="horizontal"), seed=0)
    logger = logging.getLogger("tlkeras")
    logger.propagate = True
    with caplog.at_level(logging.INFO, logger="tlkeras"):
        history = finetune(_model(backbone_weights), _ds(x, y), stage1={"epochs": 1}, stage2={"epochs": 1, "unfreeze": 2},
                           augmenter=augmenter, verbose=0)
    plan = history.cache_plan
    assert (plan.stage1, plan.stage2) == (False, False)
    assert "random augmentation is on, so the backbone runs on every augmented batch" in caplog.text
    assert "set cache_features: true to cache 4 augmented views" in caplog.text


def test_true_with_augmentation_caches_views_for_stage1_only(backbone_weights):
    x, y = _arrays(4)
    augmenter = tlkeras.data.augment.build_augmenter(tlkeras.config.AugmentConfig(rotation=0.2), seed=0)
    history = finetune(_model(backbone_weights), _ds(x, y), stage1={"epochs": 2}, stage2={"epochs": 1, "unfreeze": 2},
                       augmenter=augmenter, cache_features=True, cache_views=3, verbose=0)
    assert (history.cache_plan.stage1, history.cache_plan.stage2, history.cache_plan.views) == (True, False, 3)
    assert history["epoch"] == [1, 2, 3]


def test_random_ops_in_a_user_pipeline_are_detected():
    x, y = _arrays(2)
    plain = _ds(x, y)
    flipped = plain.map(lambda a, b: (tf.image.random_flip_left_right(a), b))
    zoom = keras.layers.RandomZoom(0.1, seed=1)
    keras_aug = plain.map(lambda a, b: (zoom(a, training=True), b))
    assert caching.has_random_ops(plain) is False  # shuffling is not augmentation
    assert caching.has_random_ops(flipped) is True
    assert caching.has_random_ops(keras_aug) is True
    generated = tf.data.Dataset.from_generator(lambda: iter([(x[0], 0)]), output_signature=(
        tf.TensorSpec([32, 32, 3], tf.float32), tf.TensorSpec([], tf.int32)))
    assert caching.has_random_ops(generated) is None  # Python code: cannot tell


def test_over_budget_caches_spill_to_disk_and_are_removed(tmp_path, backbone_weights):
    x, y = _arrays(4)
    model = _model(backbone_weights)
    extractor, _ = caching.split_at_head(model)
    in_memory = caching.compute_cache(lambda p: extractor(p, training=False), _ds(x, y, False), 1 << 30, None)
    spilled = caching.compute_cache(lambda p: extractor(p, training=False), _ds(x, y, False), 1, str(tmp_path))
    assert in_memory.folder is None and in_memory.arrays[0].dtype == np.float32
    assert spilled.folder and os.path.isdir(spilled.folder) and spilled.arrays[0].dtype == np.float16
    assert "spilled to disk as float16" in spilled.notes[0]
    np.testing.assert_array_equal(spilled.labels, in_memory.labels)
    np.testing.assert_allclose(np.asarray(spilled.arrays[0], np.float32), in_memory.arrays[0], rtol=2e-3, atol=2e-3)
    rows = [batch for batch in caching.cached_dataset(spilled, 5, shuffle=True)]
    assert sum(int(b[1].shape[0]) for b in rows) == len(y) and rows[0][0].dtype == tf.float32
    spilled.close()
    assert not os.path.exists(spilled.folder)


def test_spilled_training_matches_in_memory_training(tmp_path, backbone_weights):
    x, y = _arrays(4)
    predictions = []
    for budget in (1024, 0.01):  # MB: 10 kB holds less than the features of these 12 images
        model = _model(backbone_weights)
        full_batch = tf.data.Dataset.from_tensor_slices((x, y)).batch(len(x))  # order cannot matter
        finetune(model, full_batch, stage1={"epochs": 2, "learning_rate": 1e-2}, stage2={"epochs": 0},
                 cache_features=True, memory_budget_mb=budget, run_dir=str(tmp_path / str(budget)), verbose=0)
        predictions.append(model.predict(x, verbose=0))
    assert not os.listdir(tmp_path / "0.01" / "checkpoints") == []  # trained with a run dir
    assert not [d for d in os.listdir(tmp_path / "0.01") if d.startswith("tlkeras-cache-")]  # spill removed
    np.testing.assert_allclose(predictions[0], predictions[1], atol=5e-3)


def test_stage2_without_backbone_layers_trains_the_head_on_cached_features(backbone_weights):
    x, y = _arrays(4)
    model = _model(backbone_weights)
    backbone_before = [w.numpy().copy() for w in model.get_layer("backbone").weights]
    history = finetune(model, _ds(x, y), stage1={"epochs": 1}, stage2={"epochs": 2, "unfreeze": 0},
                       cache_features=True, verbose=0)
    assert history.cache_plan.stage1 and history.cache_plan.stage2
    assert history["stage"] == [1, 2, 2]
    for before, after in zip(backbone_before, model.get_layer("backbone").weights):
        np.testing.assert_array_equal(before, after.numpy())



def test_the_cache_pass_shows_a_progress_bar(capsys):
    from tlkeras import caching

    images = tf.data.Dataset.from_tensor_slices((np.zeros((6, 4), "float32"), np.arange(6))).batch(2)
    cache = caching.compute_cache(lambda x: x * 2, images, 1 << 20, None, progress="caching training features")
    out = capsys.readouterr().out
    assert "caching training features" in out and "3/3" in out
    assert cache.arrays[0].shape == (6, 4)


def test_spilled_token_ids_and_masks_stay_exact_while_floats_go_float16(tmp_path):
    """A text encoder's cut carries token ids and a padding mask: float16 would round id 30001 to 30000."""
    x = np.arange(6, dtype=np.float32).reshape(6, 1) + 0.1
    ds = tf.data.Dataset.from_tensor_slices((x, np.arange(6) % 2)).batch(2)
    cache = caching.compute_cache(
        lambda p: (p * 2.0, tf.cast(p, tf.int32) + 30001, p > 2.5), ds, 1, str(tmp_path))
    floats, ids, mask = cache.arrays
    assert cache.folder and (floats.dtype, ids.dtype, mask.dtype) == (np.float16, np.int32, np.bool_)
    np.testing.assert_array_equal(ids[:, 0], np.arange(6) + 30001)
    np.testing.assert_array_equal(mask[:, 0], x[:, 0] > 2.5)
    np.testing.assert_allclose(np.asarray(floats, np.float32), x * 2.0, rtol=1e-3)
    (f, i, m), y = next(iter(caching.cached_dataset(cache, 6, shuffle=False)))
    assert (f.dtype, i.dtype, m.dtype) == (tf.float32, tf.int32, tf.bool)  # only float16 is widened
    np.testing.assert_array_equal(i.numpy()[:, 0], np.arange(6) + 30001)
    np.testing.assert_array_equal(y.numpy(), np.arange(6) % 2)
    cache.close()


def test_a_cache_in_memory_is_held_once_while_it_is_made_and_while_it_is_read():
    def status(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024

    rows, width = 50_000, 1000  # 191 MB of float32 features
    images = tf.data.Dataset.range(rows).batch(500).map(
        lambda i: (tf.fill([tf.size(i), 8], 1.0), i % 3))
    fn = tf.function(lambda pixels: tf.tile(pixels, [1, width // 8]),
                     input_signature=[tf.TensorSpec([None, 8], tf.float32)])
    fn(tf.zeros([500, 8]))  # traced before memory is measured
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) starts again from here
    before = status("VmRSS")
    cache = caching.compute_cache(fn, images, budget_bytes=1 << 30, spill_dir=None)
    assert cache.folder is None and cache.arrays[0].shape == (rows, width)
    size = cache.arrays[0].nbytes / 2**20
    # made in one buffer: batches kept and joined at the end would have held it twice at the peak
    assert status("VmHWM") - before < 1.3 * size
    held = status("VmRSS")
    for _ in caching.cached_dataset(cache, 500, shuffle=True, seed=0):
        pass
    assert status("VmRSS") - held < 0.3 * size  # read in place: tf.data's graph rewrite would have copied it


@pytest.mark.parametrize("stage2", [{"epochs": 0}, {"epochs": 2, "unfreeze": "blocks:2", "learning_rate": 1e-3}])
def test_the_kept_validation_cache_gives_the_whole_models_probabilities(backbone_weights, stage2):
    """What build_and_finetune evaluates when the frozen layers' outputs are cached: the trained part on the
    cached validation inputs must answer as the whole model on the validation images."""
    from tlkeras.evaluate import predict_probabilities

    x, y = _arrays()
    model = _model(backbone_weights)
    history = finetune(model, _ds(x, y), _ds(x, y, False), stage1={"epochs": 2, "learning_rate": 1e-2}, stage2=stage2,
                       cache_features=True, inputs_random=False, keep_cached_validation=True, verbose=0)
    kept = history.cached_validation
    assert kept is not None and kept.model is not model
    from_cache, labels = predict_probabilities(model, kept.data, part=kept.model)
    whole, whole_labels = predict_probabilities(model, _ds(x, y, False))
    np.testing.assert_array_equal(labels, whole_labels)
    np.testing.assert_allclose(from_cache, whole, atol=1e-5)  # float rounding of two graphs; a wrong part is 1e-2 off
    assert np.ptp(whole, axis=0).max() > 1e-2


def test_no_validation_cache_is_kept_when_it_would_not_give_the_whole_models_answers(tmp_path, backbone_weights):
    x, y = _arrays(4)
    runs = {
        "the whole backbone trained": ({"epochs": 1, "unfreeze": "all"}, 1024, True),
        "spilled as float16": ({"epochs": 1, "unfreeze": "blocks:2"}, 0.01, True),
        "not asked for": ({"epochs": 1, "unfreeze": "blocks:2"}, 1024, False),
    }
    for why, (stage2, budget, keep) in runs.items():
        model = _model(backbone_weights)
        history = finetune(model, _ds(x, y), _ds(x, y, False), stage1={"epochs": 1}, stage2=stage2,
                           cache_features="auto", inputs_random=False, memory_budget_mb=budget,
                           run_dir=str(tmp_path / why.split()[0]), keep_cached_validation=keep, verbose=0)
        assert history.cache_plan.stage1, why
        assert history.cached_validation is None, why


def test_a_spilled_cache_is_read_in_batches_each_pass_a_permutation_of_its_rows(tmp_path):
    """Spilled caches are read a batch at a time from their files: in order unshuffled, each pass every row once
    when shuffled, passes joined into full batches when the data repeats, the last short batch dropped when asked;
    the values those of the rows they came with (labels, both inputs), back as float32."""
    n = 10
    ids = np.arange(n, dtype=np.float32)
    features = np.repeat(ids[:, None], 6, axis=1)
    activations = np.repeat(ids[:, None, None], 4, axis=1).repeat(3, axis=2)
    fn = tf.function(lambda p: [p[:, :6], tf.reshape(tf.repeat(p[:, :1], 12, axis=1), [-1, 4, 3])])
    rows = tf.data.Dataset.from_tensor_slices((np.repeat(ids[:, None], 8, axis=1), np.arange(n))).batch(4)
    cache = caching.compute_cache(fn, rows, 1, str(tmp_path))
    assert cache.folder is not None and cache.arrays[0].dtype == np.float16
    np.testing.assert_array_equal(np.asarray(cache.arrays[0], np.float32), features)
    np.testing.assert_array_equal(np.asarray(cache.arrays[1], np.float32), activations)

    def read(ds, batches=None, dtype=tf.float32):
        out = []
        for (x, a), y in (ds.take(batches) if batches else ds):
            assert x.dtype == dtype and a.dtype == dtype
            np.testing.assert_array_equal(x.numpy()[:, 0], y.numpy())  # each row with its own label
            np.testing.assert_array_equal(a.numpy()[:, 2, 1], y.numpy())
            out.append(y.numpy().tolist())
        return out

    assert read(caching.cached_dataset(cache, 4, shuffle=False)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert read(caching._memmap_batches(cache, 4, False, None, False, True), dtype=tf.float16) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    shuffled = caching.cached_dataset(cache, 4, shuffle=True, seed=1)
    first, second = read(shuffled), read(shuffled)  # two passes over one pipeline: each reshuffled
    for one_pass in (first, second):
        assert [len(b) for b in one_pass] == [4, 4, 2] and sorted(sum(one_pass, [])) == list(range(n))
    assert first != second
    assert first == read(caching.cached_dataset(cache, 4, shuffle=True, seed=1))  # a seed is an order
    repeated = sum(read(caching.cached_dataset(cache, 4, shuffle=True, seed=2, epoch_rows=5), batches=5), [])
    assert len(repeated) == 2 * n  # five full batches: two passes joined
    assert sorted(repeated[:n]) == sorted(repeated[n:]) == list(range(n))
    cache.close()


def test_rows_of_a_spilled_array_are_read_from_its_file_as_indexing_would_give_them(tmp_path):
    """`_read_rows` reads rows with os.preadv (not through the memory map, which would make them resident); a
    part of a map that does not span its file (a slice: numpy keeps the parent's offset) is indexed instead."""
    path = str(tmp_path / "0.bin")
    values = np.arange(7 * 3 * 2, dtype=np.float16).reshape(7, 3, 2)
    values.tofile(path)
    mapped = np.memmap(path, dtype=np.float16, mode="r", shape=(7, 3, 2))
    rows = np.array([6, 0, 3, 3])
    np.testing.assert_array_equal(caching._read_rows(mapped, rows), values[rows])
    part = mapped[2:]
    np.testing.assert_array_equal(caching._read_rows(part, np.array([0, 4])), values[[2, 6]])
    np.testing.assert_array_equal(caching._read_rows(values, rows), values[rows])  # in memory
