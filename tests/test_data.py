import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import write_image_folder
from tlkeras.config import FinetuneConfig
from tlkeras.data import images as image_io
from tlkeras.data.datasets import class_weights, load_examples, make_datasets, stratified_split
from tlkeras.errors import DataError


def _write(path, data: bytes):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _png(shape, value=128):
    return tf.io.encode_png(np.full(shape, value, np.uint8)).numpy()


def _cfg(**values):
    return FinetuneConfig.from_dict({"batch_size": 4, **values})


# === Decoding: the one function ===


@pytest.mark.parametrize(
    "encoded, expected_shape",
    [
        (lambda: _png((10, 12, 1)), (10, 12, 3)),  # grayscale
        (lambda: _png((10, 12, 4)), (10, 12, 3)),  # RGBA
        (lambda: tf.io.encode_jpeg(np.zeros((9, 7, 3), np.uint8)).numpy(), (9, 7, 3)),
        (lambda: tf.io.encode_png(np.full((5, 6, 3), 40000, np.uint16)).numpy(), (5, 6, 3)),  # 16-bit PNG
    ],
)
def test_decode_image_gives_rgb_uint8(encoded, expected_shape):
    image = image_io.decode_image(tf.constant(encoded()))
    assert tuple(image.shape) == expected_shape and image.dtype == tf.uint8


def _pillow_bytes(image, fmt, **kwargs) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def test_bmp_and_the_first_frame_of_an_animated_gif():
    Image = pytest.importorskip("PIL.Image")
    bmp = _pillow_bytes(Image.new("RGB", (6, 4), (10, 200, 30)), "BMP")
    out = image_io.decode_image(tf.constant(bmp)).numpy()
    assert out.shape == (4, 6, 3) and out[0, 0].tolist() == [10, 200, 30]
    frames = [Image.new("RGB", (5, 5), (255, 0, 0)), Image.new("RGB", (5, 5), (0, 0, 255))]
    gif = _pillow_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:])
    out = image_io.decode_image(tf.constant(gif)).numpy()
    assert out.shape == (5, 5, 3)
    assert out[2, 2, 0] > 200 and out[2, 2, 2] < 50  # red: the first frame, not the blue second


def test_sixteen_bit_png_is_scaled_to_eight_bits():
    image = image_io.decode_image(tf.constant(tf.io.encode_png(np.full((2, 2, 3), 65535, np.uint16)).numpy()))
    assert int(tf.reduce_max(image)) == 255


def test_decode_and_resize_is_float_pixels_of_the_requested_size():
    out = image_io.decode_and_resize(tf.constant(_png((50, 70, 3), 200)), (32, 24))
    assert tuple(out.shape) == (32, 24, 3) and out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), 200.0, atol=1e-3)  # a flat image stays flat, in [0, 255]


def test_an_image_already_of_the_size_comes_back_exactly_as_the_resize_would_give_it():
    """prepare_image skips the resize for an image of the target size: bit for bit what the antialiased
    bilinear resize returns there, for one image and a batch, of static or unknown size; others are resized."""
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 255, (2, 24, 32, 3)).astype("float32")

    def resize(x, size):
        return tf.image.resize(x, size, method="bilinear", antialias=True).numpy()

    unknown = tf.function(lambda x: image_io.prepare_image(x, (24, 32)),
                          input_signature=[tf.TensorSpec([None, None, 3], tf.float32)])
    for image in (pixels, pixels[0]):
        np.testing.assert_array_equal(image_io.prepare_image(image, (24, 32)).numpy(), resize(image, (24, 32)))
        np.testing.assert_array_equal(image_io.prepare_image(image, (16, 20)).numpy(), resize(image, (16, 20)))
    np.testing.assert_array_equal(unknown(pixels[0]).numpy(), resize(pixels[0], (24, 32)))
    np.testing.assert_array_equal(unknown(pixels[0, :20]).numpy(), resize(pixels[0, :20], (24, 32)))
    assert unknown.get_concrete_function().structured_outputs.shape.as_list() == [24, 32, 3]
    jpeg = tf.io.encode_jpeg(pixels[0].astype(np.uint8)).numpy()
    np.testing.assert_array_equal(image_io.decode_and_resize(tf.constant(jpeg), (24, 32)).numpy(),
                                  resize(tf.cast(tf.io.decode_jpeg(jpeg), tf.float32), (24, 32)))


# === Folders ===


def test_folder_listing_ignores_hidden_and_non_image_files_and_walks_nested_folders(tmp_path):
    root = tmp_path / "data"
    _write(str(root / "cats" / "a.png"), _png((8, 8, 3)))
    _write(str(root / "cats" / "deep" / "b.JPG"), tf.io.encode_jpeg(np.zeros((8, 8, 3), np.uint8)).numpy())
    _write(str(root / "cats" / ".hidden.png"), _png((8, 8, 3)))
    _write(str(root / "cats" / ".DS_Store"), b"\0")
    _write(str(root / "cats" / "Thumbs.db"), b"\0")
    _write(str(root / "cats" / "notes.txt"), b"hello")
    _write(str(root / "dogs" / "c.png"), _png((8, 8, 3)))
    _write(str(root / ".git" / "d.png"), _png((8, 8, 3)))
    folder = image_io.list_image_folder(str(root))
    assert folder.class_names == ["cats", "dogs"]
    assert [os.path.relpath(p, root) for p in folder.paths] == ["cats/a.png", "cats/deep/b.JPG", "dogs/c.png"]
    assert folder.labels == [0, 0, 1]


def test_truncated_and_fake_images_are_found_with_reasons(tmp_path):
    good = str(tmp_path / "good.jpg")
    truncated = str(tmp_path / "truncated.jpg")
    fake = str(tmp_path / "fake.png")
    empty = str(tmp_path / "empty.jpg")
    jpeg = tf.io.encode_jpeg(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).numpy()
    _write(good, jpeg)
    _write(truncated, jpeg[: len(jpeg) // 2])
    _write(fake, b"this is not an image")
    _write(empty, b"")
    bad = dict(image_io.find_undecodable([good, truncated, fake, empty]))
    assert set(bad) == {truncated, fake, empty}
    assert all(reason for reason in bad.values())


def test_folder_with_a_truncated_jpeg_skips_it_and_reports_it(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=4)
    broken = os.path.join(root, "red", "broken.jpg")
    jpeg = tf.io.encode_jpeg(np.zeros((40, 40, 3), np.uint8)).numpy()
    _write(broken, jpeg[:200])
    bundle = make_datasets(_cfg(data=root, val_split=0.25), (32, 32))
    assert [p for p, _ in bundle.skipped] == [broken]
    assert bundle.train_count + bundle.val_count == 12
    # iterating the whole pipeline does not hit the broken file
    assert sum(int(x.shape[0]) for x, _ in bundle.train) == bundle.train_count


def test_class_folder_without_images_is_an_error_naming_it(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=2)
    os.makedirs(os.path.join(root, "empty"))
    with pytest.raises(DataError, match=r"the class folder '.*empty' holds no images"):
        make_datasets(_cfg(data=root), (32, 32))


def test_missing_data_path_is_an_error(tmp_path):
    with pytest.raises(DataError, match=r"data: the path '.*nowhere' does not exist"):
        make_datasets(_cfg(data=str(tmp_path / "nowhere")), (32, 32))


def test_validation_folder_must_use_known_classes(tmp_path):
    train = write_image_folder(tmp_path / "train", per_class=2)
    val = write_image_folder(tmp_path / "val", per_class=2, classes={"red": (200, 0, 0), "purple": (90, 0, 90)})
    with pytest.raises(DataError, match=r"class folders the model does not know: purple"):
        make_datasets(_cfg(data=train, val_data=val), (32, 32))


# === Splits and weights ===


def test_stratified_split_keeps_class_proportions_and_is_seeded():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 10 + [3] * 1)
    train, val = stratified_split(labels, 0.2, seed=3)
    assert set(train).isdisjoint(val) and len(train) + len(val) == len(labels)
    assert np.bincount(labels[val], minlength=4).tolist() == [10, 6, 2, 0]  # a singleton class stays in train
    again = stratified_split(labels, 0.2, seed=3)
    assert np.array_equal(again[1], val)
    assert not np.array_equal(stratified_split(labels, 0.2, seed=4)[1], val)


def test_balanced_class_weights():
    weights = class_weights("balanced", np.array([0, 0, 0, 1]), ["a", "b"])
    assert weights == pytest.approx({0: 4 / 6, 1: 2.0})
    assert class_weights({"b": 3}, np.array([0, 1]), ["a", "b"]) == {0: 1.0, 1: 3.0}
    with pytest.raises(DataError, match=r"class_weight: 'c' is not a class"):
        class_weights({"c": 3}, np.array([0, 1]), ["a", "b"])


# === Arrays and tf.data ===


def test_grayscale_arrays_with_string_labels():
    x = np.random.default_rng(0).integers(0, 255, (10, 8, 8)).astype(np.uint8)
    y = np.array(["zero", "one"] * 5)
    bundle = make_datasets(_cfg(val_split=0.2), (16, 16), data=(x, y))
    assert bundle.class_names == ["one", "zero"]
    images, labels = next(iter(bundle.val))
    assert images.shape[1:] == (16, 16, 3)
    # the validation pipeline is the shared preprocessing, unaugmented
    row = bundle.val_examples.arrays[0]
    np.testing.assert_allclose(images[0].numpy(), image_io.prepare_image(row, (16, 16)).numpy())


@pytest.mark.parametrize(
    "x, y, message",
    [
        (np.zeros((4, 8)), np.zeros(4, int), r"images must have shape \(N, H, W\)"),
        (np.zeros((4, 8, 8, 3)), np.zeros(3, int), r"labels must have shape \(4,\)"),
        (np.zeros((4, 8, 8, 3)), np.array([0, 1, -1, 0]), r"labels must be class indices >= 0"),
    ],
)
def test_bad_arrays_are_explained(x, y, message):
    with pytest.raises(DataError, match=message):
        make_datasets(_cfg(), (16, 16), data=(x, y))


def test_unit_range_arrays_get_a_warning(caplog):
    import logging

    x = np.random.default_rng(0).uniform(0, 1, (4, 8, 8, 3)).astype("float32")
    with caplog.at_level(logging.WARNING, logger="tlkeras"):
        logger = logging.getLogger("tlkeras")
        logger.propagate = True
        make_datasets(_cfg(val_split=0), (16, 16), data=(x, np.array([0, 1, 0, 1])))
    assert "expects pixels in [0, 255]" in caplog.text


def test_tf_data_dataset_batched_input_is_split_and_resized():
    x = np.random.default_rng(0).integers(0, 255, (12, 10, 10, 3)).astype(np.uint8)
    y = np.arange(12) % 3
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(5)
    bundle = make_datasets(_cfg(val_split=0.25, class_names=["a", "b", "c"]), (16, 16), data=ds)
    assert bundle.class_names == ["a", "b", "c"]
    assert (bundle.train_count, bundle.val_count) == (9, 3)
    val_labels = np.concatenate([lbl.numpy() for _, lbl in bundle.val])
    assert sorted(val_labels.tolist()) == [0, 1, 2]
    assert sum(int(b.shape[0]) for b, _ in bundle.train) == 9


def test_dataset_of_dicts_is_explained():
    ds = tf.data.Dataset.from_tensor_slices({"image": np.zeros((2, 4, 4, 3)), "label": [0, 1]})
    with pytest.raises(DataError, match=r"must yield \(image, label\) pairs.*as_supervised=True"):
        load_examples(ds, "data")


def test_tfds_source_through_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=60):
        bundle = make_datasets(_cfg(val_split=0.2), (16, 16), data="tfds:mnist:train")
    assert bundle.class_names == [str(i) for i in range(10)]
    assert bundle.train_count + bundle.val_count == 60
    images, _ = next(iter(bundle.train))
    assert images.shape[1:] == (16, 16, 3)


def test_augmentation_is_built_for_training_and_the_pipelines_stay_plain():
    x = np.random.default_rng(0).integers(0, 255, (8, 16, 16, 3)).astype(np.uint8)
    y = np.arange(8) % 2
    cfg = _cfg(val_split=0.5, augment={"flip": "horizontal", "rotation": 0.2}, cache_images=False)
    bundle = make_datasets(cfg, (16, 16), data=(x, y))
    assert [layer.__class__.__name__ for layer in bundle.augmenter.layers] == ["RandomFlip", "RandomRotation"]
    val_a = np.concatenate([b.numpy() for b, _ in bundle.val])
    val_b = np.concatenate([b.numpy() for b, _ in bundle.val])
    np.testing.assert_array_equal(val_a, val_b)
    images, _ = next(iter(bundle.train))
    augmented = bundle.augmenter(images, training=True).numpy()
    assert augmented.shape == images.shape and not np.allclose(augmented, images.numpy())
    assert make_datasets(_cfg(val_split=0.5), (16, 16), data=(x, y)).augmenter is None


@pytest.mark.parametrize("ops", [{"rand_augment": 0.5}, {"erasing": 1.0}, {"augmix": 0.5}, "light", "strong"])
def test_each_strong_op_and_preset_changes_training_images_only(ops):
    x = np.random.default_rng(0).integers(0, 255, (8, 16, 16, 3)).astype(np.uint8)
    y = np.arange(8) % 2
    bundle = make_datasets(_cfg(val_split=0.5, augment=ops, cache_images=False), (16, 16), data=(x, y))
    from tlkeras.config import AUGMENT_PRESETS

    names = [layer.__class__.__name__ for layer in bundle.augmenter.layers]
    expected = {"rand_augment": ["RandAugment"], "erasing": ["RandomErasing"], "augmix": ["AugMix"]}
    if isinstance(ops, str):  # a preset: its ops, as the docs spell them out
        assert len(names) == len(AUGMENT_PRESETS[ops]) and ("RandAugment" in names) == (ops == "strong")
    else:
        assert names == expected[next(iter(ops))]
    images, _ = next(iter(bundle.train))
    augmented = bundle.augmenter(images, training=True).numpy()
    assert augmented.shape == images.shape and not np.allclose(augmented, images.numpy())
    assert augmented.min() >= 0 and augmented.max() <= 255
    np.testing.assert_array_equal(bundle.augmenter(images, training=False).numpy(), images.numpy())  # inference
    val = [np.concatenate([b.numpy() for b, _ in bundle.val]) for _ in range(2)]
    np.testing.assert_array_equal(val[0], val[1])


def test_folder_pixels_are_decoded_once_and_kept_when_they_fit(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=3)
    kept = make_datasets(_cfg(data=root, val_split=0), (32, 32))
    assert kept.train_examples.pixels.shape == (9, 32, 32, 3)
    # identical to decoding each file again with the one decode function
    path = kept.train_examples.paths[4]
    np.testing.assert_array_equal(
        kept.train_examples.pixels[4], image_io.load_image(tf.constant(path), (32, 32)).numpy()
    )
    streamed = make_datasets(_cfg(data=root, val_split=0, cache_images=False), (32, 32))
    assert streamed.train_examples.pixels is None
    a = sorted(float(b.numpy().sum()) for b, _ in kept.train.unbatch().batch(1))
    b = sorted(float(b.numpy().sum()) for b, _ in streamed.train.unbatch().batch(1))
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_kept_pixels_are_held_once_split_and_scanned_in_place(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=4)
    broken = os.path.join(root, "green", "broken.jpg")
    _write(broken, tf.io.encode_jpeg(np.zeros((40, 40, 3), np.uint8)).numpy()[:200])
    bundle = make_datasets(_cfg(data=root, val_split=0.25), (32, 32))
    train, val = bundle.train_examples, bundle.val_examples
    assert [p for p, _ in bundle.skipped] == [broken] and len(train) + len(val) == 12
    # both splits are views of the one buffer of the scan (the validation rows right after the training rows),
    # aligned so that TensorFlow can use it without a copy
    assert val.pixels.ctypes.data == train.pixels.ctypes.data + train.pixels.nbytes
    assert train.pixels.base is not None and val.pixels.base is not None
    assert train.pixels.ctypes.data % 64 == 0
    # and each row is still its own file's pixels, after the broken file's row was dropped and the split moved rows
    for examples in (train, val):
        for row in (0, len(examples) - 1):
            np.testing.assert_array_equal(
                examples.pixels[row], image_io.load_image(tf.constant(examples.paths[row]), (32, 32)).numpy())
        assert [os.path.basename(os.path.dirname(p)) for p in examples.paths] == [
            bundle.class_names[c] for c in examples.labels]


def test_the_training_pipeline_on_kept_pixels_shuffles_row_numbers_in_the_images_own_order(tmp_path):
    from tlkeras.memory import gathered_batches

    pixels = np.random.default_rng(0).uniform(0, 255, (1000, 128, 128, 3)).astype(np.float32)  # 197 MB
    labels = np.arange(1000) % 7
    ds = gathered_batches(pixels, labels, 32, shuffle=True, seed=3)
    # the batches a shuffle of the images themselves gives with the same seed, epoch after epoch
    images = tf.data.Dataset.from_tensor_slices((np.arange(1000), labels)).shuffle(
        1000, seed=3, reshuffle_each_iteration=True).batch(32)

    def resident_mb():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

    before = resident_mb()
    for _ in range(2):
        for (x, y), (rows, y_images) in zip(ds, images):
            np.testing.assert_array_equal(y.numpy(), y_images.numpy())
            np.testing.assert_array_equal(x.numpy()[:, 0, 0, 0], pixels[rows.numpy(), 0, 0, 0])
    # a shuffle buffer of the images would hold all 197 MB again
    assert resident_mb() - before < 60


def test_class_weight_auto_turns_on_for_imbalance_only(caplog):
    import logging

    logging.getLogger("tlkeras").propagate = True
    imbalanced = np.array([0] * 30 + [1] * 10 + [2] * 5)
    with caplog.at_level(logging.INFO, logger="tlkeras"):
        weights = class_weights("auto", imbalanced, ["a", "b", "c"])
    assert weights == pytest.approx({0: 45 / 90, 1: 45 / 30, 2: 45 / 15})
    assert "6.0x the images of the smallest (threshold 2.0x): balanced weights on" in caplog.text
    assert class_weights("auto", np.array([0] * 10 + [1] * 8 + [2] * 6), ["a", "b", "c"]) is None


def test_folders_behind_a_url_are_listed_through_tf_io(image_folder, monkeypatch):
    # gs://bucket/photos goes through tf.io.gfile; forced here on a local folder, the listing is the same.
    from tlkeras.data import images

    local = images.list_image_folder(image_folder)
    monkeypatch.setattr(images, "_filesystem", lambda root: images._TFFiles)
    through_gfile = images.list_image_folder(image_folder)
    assert through_gfile.paths == local.paths and through_gfile.labels == local.labels
    assert through_gfile.class_names == local.class_names and len(local.paths) == 24
    assert images._filesystem("gs://bucket/photos") is images._TFFiles


def test_two_runs_with_one_seed_and_random_augmentation_are_the_same_run(tmp_path):
    # Batches augmented in parallel took the random layers' draws in the order they ran: losses differed by 3e-2.
    import tlkeras
    from conftest import save_colour_backbone

    data = write_image_folder(tmp_path / "data", per_class=12, seed=0)
    options = dict(backbone=save_colour_backbone(str(tmp_path / "colours.keras")), image_size=32, batch_size=4,
                   augment="strong", stage1={"epochs": 2}, stage2={"epochs": 2}, export=False, report=False,
                   tensorboard=False, verbose=0)
    runs = [tlkeras.build_and_finetune(data, **options, output_dir=str(tmp_path / f"run{i}")) for i in range(2)]
    assert runs[0].history["loss"] == runs[1].history["loss"]
    np.testing.assert_array_equal(runs[0].model.get_weights()[-1], runs[1].model.get_weights()[-1])
