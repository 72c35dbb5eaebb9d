"""Issue 8 (part): a folder as they come in the wild - every case counted as used, skipped or ignored."""

import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tlkeras.config import FinetuneConfig
from tlkeras.data.datasets import make_datasets
from tlkeras.errors import DataError


def _pil(mode, size=(24, 24), fmt="PNG", color=None):
    buf = io.BytesIO()
    image = Image.new(mode, size, color if color is not None else (0 if mode in ("L", "P", "I;16") else (90,) * len(mode)))
    if mode == "P":
        image.putpalette([i % 256 for i in range(768)])
    image.save(buf, format=fmt)
    return buf.getvalue()


def _write(root, rel, data):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


@pytest.fixture
def messy(tmp_path):
    root = str(tmp_path / "photos")
    rgb = tf.io.encode_jpeg(np.full((30, 40, 3), 120, np.uint8)).numpy()
    used = {
        "red cars/plain.jpg": rgb,
        "red cars/gray.png": _pil("L"),
        "red cars/rgba.png": _pil("RGBA"),
        "red cars/palette.gif": _pil("P", fmt="GIF"),
        "red cars/cmyk.jpg": _pil("CMYK", fmt="JPEG"),
        "red cars/sixteen.png": tf.io.encode_png(np.full((8, 8, 1), 40000, np.uint16)).numpy(),
        "red cars/nested/deeper/one_pixel.png": tf.io.encode_png(np.zeros((1, 1, 3), np.uint8)).numpy(),
        "blåbær/png_named.jpg": tf.io.encode_png(np.full((12, 12, 3), 7, np.uint8)).numpy(),  # wrong extension
        "blåbær/big.jpg": tf.io.encode_jpeg(np.zeros((2400, 3200, 3), np.uint8), quality=50).numpy(),
        "blåbær/plain.bmp": _pil("RGB", fmt="BMP"),
        "blåbær/photo.webp": _pil("RGB", fmt="WEBP"),  # predict and serving_default read WebP: training does too
    }
    skipped = {
        "red cars/empty.jpg": b"",
        "red cars/truncated.jpg": rgb[: len(rgb) // 2],
        "blåbær/text.png": b"just some text, not a picture",
        "blåbær/scan.tiff": _pil("RGB", fmt="TIFF"),  # a format TensorFlow does not decode: listed, not passed over
    }
    ignored = {
        "red cars/.DS_Store": b"\0\0",
        "red cars/Thumbs.db": b"\0",
        "blåbær/readme.txt": b"notes",
        "blåbær/.hidden.jpg": rgb,
        ".cache/x.jpg": rgb,
    }
    for group in (used, skipped, ignored):
        for rel, data in group.items():
            _write(root, rel, data)
    return root, used, skipped, ignored


def test_every_decodable_image_is_used_every_broken_one_skipped_with_a_reason(messy, tmp_path):
    root, used, skipped, ignored = messy
    before = {p: os.path.getmtime(os.path.join(root, p)) for p in list(used) + list(skipped) + list(ignored)}
    cfg = FinetuneConfig.from_dict({"data": root, "val_split": 0.2, "batch_size": 4, "output_dir": str(tmp_path / "r")})
    bundle = make_datasets(cfg, (32, 32))
    assert bundle.class_names == ["blåbær", "red cars"]
    assert bundle.train_count + bundle.val_count == len(used)
    assert sorted(os.path.relpath(p, root) for p, _ in bundle.skipped) == sorted(skipped)
    assert all(reason for _, reason in bundle.skipped)
    assert dict((os.path.relpath(p, root), r) for p, r in bundle.skipped)["blåbær/scan.tiff"] == (
        "a TIFF image: TensorFlow decodes JPEG, PNG, GIF, BMP and WebP; convert it to one of those")
    # every batch decodes, at the requested size, in [0, 255]
    seen = 0
    for pixels, _ in bundle.train.concatenate(bundle.val):
        assert pixels.shape[1:] == (32, 32, 3)
        assert float(tf.reduce_min(pixels)) >= 0 and float(tf.reduce_max(pixels)) <= 255
        seen += int(pixels.shape[0])
    assert seen == len(used)
    # the user's data is only read
    assert {p: os.path.getmtime(os.path.join(root, p)) for p in before} == before
    assert not [f for f in os.listdir(root) if f not in ("red cars", "blåbær", ".cache")]


def test_a_class_folder_of_tiffs_only_says_to_convert_them(tmp_path):
    root = str(tmp_path / "scans")
    _write(root, "cats/a.png", _pil("RGB"))
    _write(root, "dogs/b.tif", _pil("RGB", fmt="TIFF"))
    with pytest.raises(DataError, match=r"'.*dogs' holds no images .*; its 1 file\(s\) like 'b.tif' are of a format "
                                        r"TensorFlow does not decode: convert them to PNG or JPEG."):
        make_datasets(FinetuneConfig.from_dict({"data": root}), (32, 32))


def test_a_single_class_is_an_error_naming_the_folder(tmp_path):
    root = str(tmp_path / "only")
    _write(root, "cats/a.png", _pil("RGB"))
    with pytest.raises(DataError, match=r"found only 1 class \(cats\) in '.*only'; a classifier needs at least 2"):
        make_datasets(FinetuneConfig.from_dict({"data": root}), (32, 32))
