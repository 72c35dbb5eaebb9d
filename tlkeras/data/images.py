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
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

# What TensorFlow's decoder reads - in training, in `predict` and in the serving graph alike.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# Image formats it does not read: listed as skipped (with what to do), never silently passed over.
UNREADABLE_IMAGE_EXTENSIONS = (".tif", ".tiff", ".heic", ".heif", ".avif", ".jp2", ".psd", ".raw", ".cr2", ".nef")
# Files that operating systems and tools drop into folders; never images.
IGNORED_FILES = {"thumbs.db", "desktop.ini"}


# Images declaring more pixels (height x width) than MAX_IMAGE_PIXELS are refused before decoding: a
# 100-kilobyte PNG can declare 20000 x 20000 and take 7 GB to decode. The config key
# `max_image_pixels` changes it.
from tlkeras.config import MAX_IMAGE_PIXELS  # noqa: E402
from tlkeras.memory import aligned_empty  # noqa: E402

# The functions below branch only on Python values (a limit, a channel count) and use tf.case for the
# rest: AutoGraph has nothing to convert, and converting them anyway cost seconds of every trace (the
# scan's map, every serving signature; profiled in benchmarks/RESULTS.md, issue 17).
_plain_graph = tf.autograph.experimental.do_not_convert


@_plain_graph
def image_dimensions(image_bytes: tf.Tensor) -> tf.Tensor:
    """int64 [height, width] an encoded JPEG, PNG, GIF or BMP declares in its header, read without
    decoding the image; [-1, -1] for other bytes (the decoder then says what is wrong).

    >>> png = tf.io.encode_png(tf.zeros([3, 5, 3], tf.uint8))
    >>> image_dimensions(png).numpy().tolist(), image_dimensions(tf.constant(b"hello")).numpy().tolist()
    ([3, 5], [-1, -1])
    """
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
    head = tf.strings.substr(tf.strings.join([tf.strings.substr(image_bytes, 0, 32), b"\0" * 32]), 0, 32)
    b = tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)

    def big(at, n):
        return sum(b[at + i] * (256 ** (n - 1 - i)) for i in range(n))

    def little(at, n):
        return sum(b[at + i] * (256 ** i) for i in range(n))

    def signed32(value):  # BMP heights are negative for top-down rows
        return tf.abs(tf.where(value >= 2**31, value - 2**32, value))

    magic = tf.strings.substr(head, 0, 8)
    is_png = tf.equal(magic, b"\x89PNG\r\n\x1a\n")
    is_gif = tf.equal(tf.strings.substr(head, 0, 4), b"GIF8")
    is_bmp = tf.equal(tf.strings.substr(head, 0, 2), b"BM")
    is_jpeg = tf.equal(tf.strings.substr(head, 0, 2), b"\xff\xd8")
    unknown = tf.constant([-1, -1], tf.int64)
    return tf.case([
        (is_png, lambda: tf.stack([big(20, 4), big(16, 4)])),
        (is_gif, lambda: tf.stack([little(8, 2), little(6, 2)])),
        (is_bmp, lambda: tf.stack([signed32(little(22, 4)), signed32(little(18, 4))])),
        (is_jpeg, lambda: tf.cast(tf.io.extract_jpeg_shape(image_bytes)[:2], tf.int64)),
    ], default=lambda: unknown, exclusive=True)


def image_error(image_bytes: tf.Tensor, max_pixels: int | None = None) -> tf.Tensor:
    """Why the serving graph cannot answer one encoded image, read from its first bytes and its header without
    decoding it (a tf.string scalar; "" when it can): empty, not a format the decoder reads, a header declaring no
    pixels, or more than `max_pixels`. Damage past the header is not seen here: decoding it fails the request.

    >>> [image_error(b).numpy().decode() for b in (b"", b"<html>", tf.io.encode_png(tf.zeros([2, 2, 3], tf.uint8)))]
    ['an empty input', 'not an image: JPEG, PNG, BMP, GIF or WebP are read', '']
    """
    limit = MAX_IMAGE_PIXELS if max_pixels is None else int(max_pixels)
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
    head = tf.strings.substr(tf.strings.join([tf.strings.substr(image_bytes, 0, 16), b"\0" * 16]), 0, 16)
    known = tf.reduce_any(tf.stack([tf.equal(tf.strings.substr(head, 0, len(magic)), magic) for magic, _ in _FORMATS]
                                   + [tf.equal(tf.strings.substr(head, 0, 4), b"RIFF")
                                      & tf.equal(tf.strings.substr(head, 8, 4), b"WEBP")]))

    def from_header():
        size = image_dimensions(image_bytes)  # [-1, -1]: WebP, whose size the decoder checks
        over = (size[0] * size[1] > limit) if limit else tf.constant(False)
        return tf.case([
            (tf.equal(size[0], 0) | tf.equal(size[1], 0),
             lambda: tf.constant("an image whose header declares no pixels (damaged or cut short)")),
            (over, lambda: tf.strings.format("image of {}x{} pixels is above max_image_pixels ({}): refused before "
                                             "decoding", (size[0], size[1], limit))),
        ], default=lambda: tf.constant(""))

    return tf.case([
        (tf.equal(tf.strings.length(image_bytes), 0), lambda: tf.constant("an empty input")),
        (tf.logical_not(known), lambda: tf.constant("not an image: JPEG, PNG, BMP, GIF or WebP are read")),
    ], default=from_header)


@_plain_graph
def decode_image(image_bytes: tf.Tensor, max_pixels: int | None = None) -> tf.Tensor:
    """Decode JPEG, PNG, BMP or GIF (first frame) bytes to uint8 RGB [H, W, 3].

    Grayscale gains three channels, RGBA loses its alpha, 16-bit PNG is scaled to 8 bits. An image
    whose header declares more than `max_pixels` (default MAX_IMAGE_PIXELS; 0: no limit) is refused
    with InvalidArgumentError before any pixel is decoded.
    """
    limit = MAX_IMAGE_PIXELS if max_pixels is None else int(max_pixels)
    if limit:
        size = image_dimensions(image_bytes)
        check = tf.debugging.Assert(
            size[0] * size[1] <= limit,
            [tf.strings.format("image of {}x{} pixels is above max_image_pixels ({}): refused before decoding",
                               (size[0], size[1], limit))])
        with tf.control_dependencies([check]):
            image_bytes = tf.identity(image_bytes)
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape([None, None, 3])
    return image


@_plain_graph
def prepare_image(image: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    """Any decoded image [H, W, C] (C in 1, 3, 4; uint8 or float in [0, 255]) -> float32 [h, w, 3].

    Works on one image or a batch [N, H, W, C]. Bilinear resize with antialiasing, so
    large photos shrink without aliasing; pixel values stay in [0, 255]. An image already of
    the size is not resized (the resize would return it unchanged, at half the decode's speed).
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
    size = [int(image_size[0]), int(image_size[1])]

    def resized():
        return tf.image.resize(image, size, method="bilinear", antialias=True)

    if image.shape[-3:-1].is_fully_defined():
        return image if image.shape[-3:-1].as_list() == size else resized()
    out = tf.cond(tf.reduce_all(tf.equal(tf.shape(image)[-3:-1], size)), lambda: image, resized)
    out.set_shape(image.shape[:-3].concatenate([*size, 3]))
    return out


@_plain_graph
def decode_and_resize(image_bytes: tf.Tensor, image_size: tuple[int, int], max_pixels: int | None = None) -> tf.Tensor:
    """Encoded image bytes -> float32 RGB [h, w, 3] in [0, 255]: the training and serving input.
    Images above `max_pixels` are refused (see `decode_image`)."""
    return prepare_image(decode_image(image_bytes, max_pixels), image_size)


@_plain_graph
def load_image(path: tf.Tensor, image_size: tuple[int, int], max_pixels: int | None = None) -> tf.Tensor:
    """Read a file (local or any tf.io filesystem, e.g. gs://) and `decode_and_resize` it."""
    return decode_and_resize(tf.io.read_file(path), image_size, max_pixels)


# === Listing ===


def unreadable_image(name: str) -> str | None:
    """Why an image file of a format the decoder cannot read is skipped (None for any other file).

    >>> unreadable_image("scan.TIFF")
    'a TIFF image: TensorFlow decodes JPEG, PNG, GIF, BMP and WebP; convert it to one of those'
    """
    base = os.path.basename(name).lower()
    if base.startswith(".") or not base.endswith(UNREADABLE_IMAGE_EXTENSIONS):
        return None
    return (f"a {base.rsplit('.', 1)[1].upper()} image: TensorFlow decodes JPEG, PNG, GIF, BMP and WebP; convert it "
            "to one of those")


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
    skipped: list = field(default_factory=list)  # (path, reason) of class folders that were not followed


def list_image_folder(root: str, class_names: list[str] | None = None) -> ImageFolder:
    """List `root/<class>/**/<image>` files, sorted; classes are the sorted subfolder names.

    Hidden entries and files without an image extension are ignored. With `class_names`
    (e.g. those of a training folder), the subfolders must be among them.
    """
    from tlkeras.errors import DataError

    fs = _filesystem(root)
    if not fs.isdir(root):
        if "://" not in root and os.path.isfile(root):
            raise DataError(f"data: {root!r} is a file; pass the folder that holds one subfolder of images per class "
                            "(or a .csv/.tsv of image paths and labels).")
        raise DataError(f"data: the folder {root!r} does not exist.")
    folders, skipped = fs.subfolders(root)
    # names that are not UTF-8 are listed by their bytes and named with U+FFFD where text needs them
    raw = {printable(name): name for name in sorted(folders) if not name.startswith(".")}
    found = sorted(raw)
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
        class_dir = os.path.join(root, raw[name])
        listed = fs.files(class_dir)
        files = [path for path in listed if is_image_file(os.path.basename(path))]
        skipped.extend((path, unreadable_image(path)) for path in listed if unreadable_image(path))
        if not files:
            others = [path for path in listed if unreadable_image(path)]
            raise DataError(f"data: the class folder {printable(class_dir)!r} holds no images "
                            f"({', '.join(IMAGE_EXTENSIONS)})"
                            + (f"; its {len(others)} file(s) like {os.path.basename(others[0])!r} are of a format "
                               "TensorFlow does not decode: convert them to PNG or JPEG." if others else "."))
        files.sort()
        paths.extend(files)
        labels.extend([label] * len(files))
    return ImageFolder(paths, labels, list(class_names), skipped)


class _LocalFiles:
    """Folder listing on the local file system."""

    isdir = staticmethod(os.path.isdir)

    @staticmethod
    def subfolders(root):
        """(names, skipped): the class folders of `root`, and (path, reason) of links not followed: a
        link that leads back into the data folder would list its images twice under other labels."""
        tree = os.path.realpath(root)
        names, skipped = [], []
        for entry in os.scandir(root):
            try:
                if not entry.is_dir():
                    continue
            except OSError as e:  # a link loop, a folder we may not read
                skipped.append((entry.path, f"not followed: {e.strerror or e}"))
                continue
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                if target == tree or tree.startswith(target + os.sep) or target.startswith(tree + os.sep):
                    skipped.append((entry.path, f"not followed: a link back into the data folder (to {target})"))
                    continue
            names.append(entry.name)
        return names, skipped

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

        return [name.rstrip("/") for name in tf.io.gfile.listdir(root)
                if tf.io.gfile.isdir(os.path.join(root, name))], []

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


def scan_images(paths: list[str], image_size: tuple[int, int] | None = None, max_pixels: int | None = None):
    """Decode every file once, in parallel, with the training decoder (images above `max_pixels`
    are refused from their header, see `decode_image`).

    Returns (bad, pixels): `bad` lists (path, reason) of files that cannot be decoded (the
    reasons come from decoding those few again one by one); with `image_size`, `pixels` holds
    the float32 [n_good, h, w, 3] result of `decode_and_resize` for the good files in order,
    so they are never decoded again; else None.
    """
    if not paths:
        return [], (np.zeros((0, *image_size, 3), np.float32) if image_size else None)
    ds = tf.data.Dataset.from_tensor_slices((tf.range(len(paths), dtype=tf.int64), file_names(paths)))
    if image_size is None:
        fn = lambda i, p: (i, tf.shape(decode_image(tf.io.read_file(p), max_pixels)))  # noqa: E731
    else:
        fn = lambda i, p: (i, load_image(p, image_size, max_pixels))  # noqa: E731
    ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False).ignore_errors()
    if image_size is None:
        ok = {int(i) for i, _ in ds.as_numpy_iterator()}
        pixels = None
    else:
        # One buffer for all files, filled in place (batched: the Python loop runs once per 64
        # images), aligned so that TensorFlow can use it without a copy (`tlkeras.memory.as_tensor`); rows
        # of undecodable files are dropped at the end, in place.
        pixels = aligned_empty((len(paths), *image_size, 3), np.float32)
        ok = set()
        for i, values in ds.batch(64).as_numpy_iterator():
            pixels[i] = values
            ok.update(i.tolist())
        if len(ok) < len(paths):
            for row, index in enumerate(sorted(ok)):
                if row != index:
                    pixels[row] = pixels[index]
            pixels = pixels[:len(ok)]
    bad = [(path, _decode_error(path, max_pixels)) for index, path in enumerate(paths) if index not in ok]
    return bad, pixels


def find_undecodable(paths: list[str], max_pixels: int | None = None) -> list[tuple[str, str]]:
    """(path, reason) of the files the training decoder cannot decode."""
    return scan_images(paths, max_pixels=max_pixels)[0]


def file_names(paths: list[str]) -> list[bytes]:
    """Paths as TensorFlow takes them: bytes, so that names that are not UTF-8 (which Python keeps as
    surrogates) reach the file system unchanged instead of failing to convert."""
    return [os.fsencode(p) if "://" not in p else p.encode("utf-8") for p in paths]


def printable(name: str) -> str:
    r"""A file or folder name fit for text (labels.txt, logs, JSON): bytes that are not UTF-8 become U+FFFD.

    >>> printable("caf\udce9"), printable("café")
    ('caf�', 'café')
    """
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


_FORMATS = ((b"\x89PNG", "PNG"), (b"\xff\xd8", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP"))


def image_problem(data: bytes, max_pixels: int | None = None) -> str | None:
    r"""Why `data` is not an image the decoder takes, in words a user can act on; None when it is.

    >>> image_problem(b""), image_problem(b"<html>")
    ('an empty file', 'not an image: JPEG, PNG, BMP or GIF are read')
    >>> image_problem(b"\x89PNG\r\n\x1a\n" + bytes(8))
    'not a decodable PNG image (damaged or cut short)'
    >>> image_problem(tf.io.encode_png(tf.zeros([300, 400, 3], tf.uint8)).numpy(), max_pixels=100_000)
    'a PNG image of 400x300 pixels (0.12 megapixels), above max_image_pixels (0.1 megapixels): refused before decoding'
    """
    if not data:
        return "an empty file"
    kind = next((name for magic, name in _FORMATS if data.startswith(magic)), None)
    if kind is None:
        return "not an image: JPEG, PNG, BMP or GIF are read"
    limit = MAX_IMAGE_PIXELS if max_pixels is None else int(max_pixels)
    try:
        height, width = (int(v) for v in image_dimensions(data).numpy())
        if limit and height * width > limit:
            return (f"a {kind} image of {width}x{height} pixels ({height * width / 1e6:.3g} megapixels), above "
                    f"max_image_pixels ({limit / 1e6:.3g} megapixels): refused before decoding")
        decode_image(data, 0)
    except (tf.errors.OpError, ValueError):
        return f"not a decodable {kind} image (damaged or cut short)"
    return None


def _decode_error(path: str, max_pixels: int | None = None) -> str:
    try:
        with tf.io.gfile.GFile(path, "rb") if "://" in path else open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return f"could not be read ({e.strerror or e})"
    return image_problem(data, max_pixels) or "could not be decoded"
