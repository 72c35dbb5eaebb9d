"""Images: THE decode-and-resize function, file listing, and the scan for undecodable files.

`decode_and_resize` (bytes -> float32 RGB pixels in [0, 255], resized) and
`prepare_image` (any decoded image -> the same) are the only image preprocessing
in tlkeras. The training pipeline maps them over the data, and the exported
SavedModel's serving signatures call them unchanged; the model itself carries
the backbone's normalisation (`ImagePreprocessing`). Training and serving can
therefore not disagree about decoding, resizing or scale.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# Files that operating systems and tools drop into folders; never images.
IGNORED_FILES = {"thumbs.db", "desktop.ini"}


def decode_image(image_bytes: tf.Tensor) -> tf.Tensor:
    """Decode JPEG, PNG, BMP or GIF (first frame) bytes to uint8 RGB [H, W, 3].

    Grayscale gains three channels, RGBA loses its alpha, 16-bit PNG is scaled to 8 bits.
    """
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape([None, None, 3])
    return image


def prepare_image(image: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    """Any decoded image [H, W, C] (C in 1, 3, 4; uint8 or float in [0, 255]) -> float32 [h, w, 3].

    Works on one image or a batch [N, H, W, C]. Bilinear resize with antialiasing, so
    large photos shrink without aliasing; pixel values stay in [0, 255].
    """
    image = tf.convert_to_tensor(image)
    channels = image.shape[-1]
    if channels == 1:
        image = tf.image.grayscale_to_rgb(image)
    elif channels == 4:
        image = image[..., :3]
    elif channels != 3:
        raise ValueError(f"images must have 1, 3 or 4 channels, got shape {image.shape}")
    image = tf.cast(image, tf.float32)
    return tf.image.resize(image, image_size, method="bilinear", antialias=True)


def decode_and_resize(image_bytes: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    """Encoded image bytes -> float32 RGB [h, w, 3] in [0, 255]: the training and serving input."""
    return prepare_image(decode_image(image_bytes), image_size)


def load_image(path: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    """Read a file (local or any tf.io filesystem, e.g. gs://) and `decode_and_resize` it."""
    return decode_and_resize(tf.io.read_file(path), image_size)


# === Listing ===


def is_image_file(name: str) -> bool:
    base = os.path.basename(name)
    if base.startswith(".") or base.lower() in IGNORED_FILES:
        return False
    return base.lower().endswith(IMAGE_EXTENSIONS)


@dataclass
class ImageFolder:
    """The images of a folder with one subfolder per class."""

    paths: list[str]
    labels: list[int]
    class_names: list[str]


def list_image_folder(root: str, class_names: list[str] | None = None) -> ImageFolder:
    """List `root/<class>/**/<image>` files, sorted; classes are the sorted subfolder names.

    Hidden entries and files without an image extension are ignored. With `class_names`
    (e.g. those of a training folder), the subfolders must be among them.
    """
    from tlkeras.errors import DataError

    fs = _filesystem(root)
    if not fs.isdir(root):
        raise DataError(f"data: the folder {root!r} does not exist.")
    found = sorted(name for name in fs.subfolders(root) if not name.startswith("."))
    if not found:
        raise DataError(
            f"data: {root!r} has no class subfolders; put the images of each class in its own folder, "
            f"e.g. {os.path.join(root, 'cats', 'img1.jpg')}."
        )
    if class_names is None:
        class_names = found
    else:
        unknown = [name for name in found if name not in class_names]
        if unknown:
            raise DataError(
                f"data: {root!r} has class folders the model does not know: {', '.join(unknown)} "
                f"(known: {', '.join(class_names)})."
            )
    paths, labels = [], []
    for name in found:
        label = class_names.index(name)
        class_dir = os.path.join(root, name)
        files = [path for path in fs.files(class_dir) if is_image_file(os.path.basename(path))]
        if not files:
            raise DataError(f"data: the class folder {class_dir!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
        files.sort()
        paths.extend(files)
        labels.extend([label] * len(files))
    return ImageFolder(paths, labels, list(class_names))


class _LocalFiles:
    """Folder listing on the local file system."""

    isdir = staticmethod(os.path.isdir)

    @staticmethod
    def subfolders(root):
        return [entry.name for entry in os.scandir(root) if entry.is_dir()]

    @staticmethod
    def files(folder):
        out = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            out.extend(os.path.join(dirpath, f) for f in filenames)
        return out


class _TFFiles:
    """Folder listing through tf.io.gfile: gs://, s3://, hdfs:// ... (a TPU reads its data from GCS)."""

    @staticmethod
    def isdir(path):
        import tensorflow as tf

        return tf.io.gfile.isdir(path)

    @staticmethod
    def subfolders(root):
        import tensorflow as tf

        return [name.rstrip("/") for name in tf.io.gfile.listdir(root) if tf.io.gfile.isdir(os.path.join(root, name))]

    @staticmethod
    def files(folder):
        import tensorflow as tf

        out = []
        for dirpath, dirnames, filenames in tf.io.gfile.walk(folder):
            dirnames[:] = sorted(d.rstrip("/") for d in dirnames if not d.startswith("."))
            out.extend(os.path.join(dirpath, f) for f in filenames)
        return out


def _filesystem(root: str):
    """gfile for URLs (gs://bucket/photos), the os module for local paths."""
    return _TFFiles if "://" in str(root) else _LocalFiles


# === Scan ===


def scan_images(paths: list[str], image_size: tuple[int, int] | None = None):
    """Decode every file once, in parallel, with the training decoder.

    Returns (bad, pixels): `bad` lists (path, reason) of files that cannot be decoded (the
    reasons come from decoding those few again one by one); with `image_size`, `pixels` holds
    the float32 [n_good, h, w, 3] result of `decode_and_resize` for the good files in order,
    so they are never decoded again; else None.
    """
    if not paths:
        return [], (np.zeros((0, *image_size, 3), np.float32) if image_size else None)
    ds = tf.data.Dataset.from_tensor_slices((tf.range(len(paths), dtype=tf.int64), paths))
    if image_size is None:
        fn = lambda i, p: (i, tf.shape(decode_image(tf.io.read_file(p))))  # noqa: E731
    else:
        fn = lambda i, p: (i, load_image(p, image_size))  # noqa: E731
    ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False).ignore_errors()
    if image_size is None:
        ok = {int(i) for i, _ in ds.as_numpy_iterator()}
        pixels = None
    else:
        # One buffer for all files, filled in place (batched: the Python loop runs once per 64
        # images); rows of undecodable files are dropped at the end.
        pixels = np.empty((len(paths), *image_size, 3), np.float32)
        ok = set()
        for i, values in ds.batch(64).as_numpy_iterator():
            pixels[i] = values
            ok.update(i.tolist())
        if len(ok) < len(paths):
            pixels = pixels[sorted(ok)]
    bad = [(path, _decode_error(path)) for index, path in enumerate(paths) if index not in ok]
    return bad, pixels


def find_undecodable(paths: list[str]) -> list[tuple[str, str]]:
    """(path, reason) of the files the training decoder cannot decode."""
    return scan_images(paths)[0]


def _decode_error(path: str) -> str:
    try:
        decode_image(tf.io.read_file(path))
    except (tf.errors.OpError, ValueError) as e:
        message = getattr(e, "message", str(e)).strip().splitlines()
        return message[0] if message else type(e).__name__
    return "could not be decoded"
