"""Hostile and odd inputs (issue 15): decompression bombs refused from their header in training,
predict and the serving graph; names that are not UTF-8; links back into the data folder; skip
reasons in words."""

import os
import shutil
import struct
import sys
import zlib

import numpy as np
import pytest
import tensorflow as tf

import tlkeras
from tlkeras.config import FinetuneConfig
from tlkeras.data.datasets import make_datasets
from tlkeras.model import model_info
from tlkeras.predict import predict


def _png_declaring(width: int, height: int, rows: int = 8) -> bytes:
    """A small PNG whose header declares width x height (a decompression bomb): only `rows` rows of
    zeros follow, which is all a decoder needs to start allocating the whole image."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(b"\0" * (1 + 3 * width)) for _ in range(rows)) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def _png(height, width):
    return tf.io.encode_png(np.full((height, width, 3), 100, np.uint8)).numpy()


def _copy(folder, tmp_path, name="photos"):
    root = tmp_path / name
    shutil.copytree(folder, root)
    return root


BOMB = _png_declaring(20000, 20000)


def test_a_bomb_is_skipped_in_training_with_its_size(tmp_path, image_folder):
    root = _copy(image_folder, tmp_path)
    (root / "red" / "bomb.png").write_bytes(BOMB)
    bundle = make_datasets(FinetuneConfig.from_dict({"data": str(root), "batch_size": 8}), (32, 32))
    assert bundle.skipped == [(str(root / "red" / "bomb.png"),
                               "a PNG image of 20000x20000 pixels (400 megapixels), above max_image_pixels "
                               "(89.5 megapixels): refused before decoding")]
    assert bundle.train_count + bundle.val_count == 24


def test_a_bomb_is_refused_by_the_serving_graph_and_skipped_by_predict(tmp_path, trained_run):
    serve = tf.saved_model.load(trained_run.export_dir).signatures["serving_default"]
    out = serve(image_bytes=tf.constant([_png(40, 48), BOMB]))  # refused from its header, the other one answered
    assert out["error"].numpy()[1].decode() == ("image of 20000x20000 pixels is above max_image_pixels (89478485): "
                                                "refused before decoding")
    assert out["error"].numpy()[0] == b"" and np.isfinite(out["probabilities"].numpy()[0]).all()
    assert np.isnan(out["probabilities"].numpy()[1]).all() and list(out["classes"].numpy()[1]) == [b"", b""]
    (tmp_path / "bomb.png").write_bytes(BOMB)
    (tmp_path / "fine.png").write_bytes(_png(40, 48))
    result = predict(trained_run.export_dir, [str(tmp_path)])
    assert [row["path"] for row in result.rows] == [str(tmp_path / "fine.png")]
    assert result.skipped == [(str(tmp_path / "bomb.png"),
                               "an image of 20000x20000 pixels (400 megapixels), above the model's max_image_pixels "
                               "(89.5 megapixels): refused before decoding")]


def test_max_image_pixels_is_configurable_and_kept_with_the_model_for_serving(tmp_path, image_folder, tiny):
    root = _copy(image_folder, tmp_path)
    (root / "blue" / "large.png").write_bytes(_png(60, 60))  # 3600 pixels; the folder's are 40x48 = 1920
    result = tlkeras.build_and_finetune(
        str(root), **{**tiny, "max_image_pixels": 2000}, stage1={"epochs": 1}, stage2={"epochs": 0},
        output_dir=str(tmp_path / "run"), verbose=0)
    assert [os.path.basename(p) for p, _ in result.skipped_files] == ["large.png"]
    assert "above max_image_pixels (0.002 megapixels)" in result.skipped_files[0][1]
    assert model_info(result.model).input_options == {"max_image_pixels": 2000}
    serve = tf.saved_model.load(result.export_dir).signatures["serving_default"]
    assert serve(image_bytes=tf.constant([_png(40, 48)]))["probabilities"].shape == (1, 3)
    assert serve(image_bytes=tf.constant([_png(60, 60)]))["error"].numpy()[0].decode().startswith(
        "image of 60x60 pixels is above max_image_pixels (2000)")
    with pytest.raises(tlkeras.errors.ConfigError, match=r"max_image_pixels: -1 is not valid: use the largest height "
                                                         r"x width an image may declare .*or 0 for no limit"):
        FinetuneConfig.from_dict({"max_image_pixels": -1})


@pytest.mark.skipif(sys.platform != "linux", reason="macOS file systems refuse names that are not UTF-8")
def test_names_that_are_not_utf8_are_read_by_their_bytes(tmp_path, image_folder):
    root = _copy(image_folder, tmp_path)
    os.rename(os.fsencode(root / "green"), os.fsencode(root) + b"/gr\xfcn")  # a Latin-1 folder name
    os.rename(os.fsencode(root / "red" / "000.png"), os.fsencode(root / "red") + b"/bad\xff\xfename.png")
    bundle = make_datasets(FinetuneConfig.from_dict({"data": str(root), "batch_size": 8, "val_split": 0.25}),
                           (32, 32))
    assert bundle.class_names == ["blue", "gr\N{REPLACEMENT CHARACTER}n", "red"]
    assert bundle.skipped == [] and bundle.train_count + bundle.val_count == 24
    seen = sum(int(x.shape[0]) for x, _ in bundle.train.concatenate(bundle.val))
    assert seen == 24  # the pipeline reads them too


def test_a_class_link_back_into_the_tree_or_a_loop_is_skipped_with_a_reason(tmp_path, image_folder):
    root = _copy(image_folder, tmp_path)
    outside = _copy(os.path.join(image_folder, "red"), tmp_path, "elsewhere")
    os.symlink(root, root / "everything")  # the data root again: every image twice, other labels
    os.symlink(root / "blue", root / "also blue")
    os.symlink(root / "loop", root / "loop")  # a link to itself
    os.symlink(outside, root / "crimson")  # a class kept elsewhere: followed
    bundle = make_datasets(FinetuneConfig.from_dict({"data": str(root), "batch_size": 8}), (32, 32))
    assert bundle.class_names == ["blue", "crimson", "green", "red"]
    reasons = dict(bundle.skipped)
    assert reasons[str(root / "everything")] == f"not followed: a link back into the data folder (to {root})"
    assert reasons[str(root / "also blue")] == f"not followed: a link back into the data folder (to {root / 'blue'})"
    assert reasons[str(root / "loop")] == "not followed: Too many levels of symbolic links"
    assert bundle.train_count + bundle.val_count == 32


def test_skip_reasons_are_words_not_tensorflow_messages(tmp_path, trained_run):
    good = _png(40, 48)
    files = {"empty.png": b"", "notes.png": b"just some text", "cut.png": good[: len(good) // 2],
             "cut.jpg": tf.io.encode_jpeg(np.zeros((40, 48, 3), np.uint8)).numpy()[:300]}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    expected = {"empty.png": "an empty file", "notes.png": "not an image: JPEG, PNG, BMP or GIF are read",
                "cut.png": "not a decodable PNG image (damaged or cut short)",
                "cut.jpg": "not a decodable JPEG image (damaged or cut short)"}
    predicted = predict(trained_run.export_dir, [str(tmp_path)])
    assert {os.path.basename(p): why for p, why in predicted.skipped} == expected
    root = tmp_path / "data"
    for i, name in enumerate(files):
        for cls in ("a", "b"):
            (root / cls).mkdir(parents=True, exist_ok=True)
            (root / cls / f"{i}.png").write_bytes(good)
        (root / "a" / name).write_bytes(files[name])
    bundle = make_datasets(FinetuneConfig.from_dict({"data": str(root), "batch_size": 8}), (32, 32))
    assert {os.path.basename(p): why for p, why in bundle.skipped} == expected


def test_the_serving_signature_answers_an_empty_batch_and_every_good_item_beside_bad_ones(trained_run):
    """An empty batch gets empty outputs; empty, non-image and no-pixel items get their reason in `error` and NaN
    scores, and the good items beside them the answers they get alone."""
    serve = tf.saved_model.load(trained_run.export_dir).signatures["serving_default"]
    empty = serve(image_bytes=tf.constant([], tf.string))
    assert empty["probabilities"].shape == (0, 3) and empty["classes"].shape == (0, 2) and empty["error"].shape == (0,)
    good = [_png(40, 48), _png(33, 20)]
    alone = serve(image_bytes=tf.constant(good))["probabilities"].numpy()
    no_pixels = b"\x89PNG\r\n\x1a\n" + bytes(8)  # a PNG signature and nothing after it
    out = serve(image_bytes=tf.constant([b"", good[0], b"<html>", no_pixels, good[1]]))
    assert [e.decode() for e in out["error"].numpy()] == [
        "an empty input", "", "not an image: JPEG, PNG, BMP, GIF or WebP are read",
        "an image whose header declares no pixels (damaged or cut short)", ""]
    np.testing.assert_allclose(out["probabilities"].numpy()[[1, 4]], alone, atol=1e-6)
    assert np.isnan(out["probabilities"].numpy()[[0, 2, 3]]).all()
    images = tf.saved_model.load(trained_run.export_dir).signatures["serving_images"]
    assert images(images=tf.zeros([0, 40, 40, 3]))["probabilities"].shape == (0, 3)
