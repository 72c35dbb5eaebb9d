"""Image inputs: RGB pixels in [0, 255] at the model's size, made from image bytes by THE
decode-and-resize function (`tlkeras.data.images.decode_and_resize`), in training and in serving."""

from __future__ import annotations

import os

import numpy as np

from tlkeras.inputs.inputs import Inputs


class ImageInputs(Inputs):
    """Pixels [N, H, W, 3] for the model; `image_bytes` (encoded JPEG/PNG/BMP/GIF) and `images`
    (float pixels of any size) for its export.

    >>> ImageInputs().signature_input, ImageInputs().file_formats
    ('image_bytes', ('tflite', 'tflite-float16', 'tflite-int8', 'onnx'))
    """

    name = "image"
    noun = "images"
    classifier = "image"
    signature_input = "image_bytes"
    predict_argument = "IMAGE_OR_FOLDER"
    file_formats = ("tflite", "tflite-float16", "tflite-int8", "onnx")
    tta_names = ("none", "flip", "flip_all", "crops:N")

    # === Model ===

    def size(self, spec, image_size):
        from tlkeras import backbones

        return backbones.resolve_image_size(spec, image_size)

    def build(self, spec, size, weights):
        import keras

        from tlkeras.layers import PREPROCESS_LAYER, ImagePreprocessing

        height, width = size
        base = spec.build((height, width), weights)
        inputs = keras.Input((height, width, 3), name="image")
        x = ImagePreprocessing(spec.preprocessing, backbone_name=spec.name, name=PREPROCESS_LAYER,
                               **spec.preprocessing_params)(inputs)
        return inputs, base(x)

    def prediction_spec(self, model):
        import tensorflow as tf

        height, width = _size(model)
        return tf.TensorSpec([None, height, width, 3], tf.float32)

    # === Data ===

    def make_datasets(self, cfg, size):
        from tlkeras.data.datasets import make_datasets

        return make_datasets(cfg, size)

    def load_examples(self, source, key, class_names, **options):
        from tlkeras.data.datasets import load_examples

        options.pop("text_column", None)
        return load_examples(source, key, class_names, **options)

    def tta_views(self, name):
        """flip: the mirror image; flip_all: the mirror, upside down, and both (for what has no up: textures, cells,
        aerial views). On digits flips cost 16-27 points (benchmarks/RESULTS.md): a choice, never a default.
        crops:N: N crops of 7/8 of each side, resized back (the centre first, then the corners, then the edges'
        middles): what a model sees when the object is a little larger or off centre; no mirror, so it suits images
        with a left and right too.

        >>> [len(ImageInputs().tta_views(n)) for n in ("flip", "flip_all", "crops:5")]
        [1, 3, 5]
        """
        import tensorflow as tf

        self.check_tta(name)
        if name.startswith("crops:"):
            return [_crop_view(box) for box in crop_boxes(int(name.split(":")[1]))]
        views = {"none": [], "flip": [tf.image.flip_left_right],
                 "flip_all": [tf.image.flip_left_right, tf.image.flip_up_down,
                              lambda x: tf.image.flip_up_down(tf.image.flip_left_right(x))]}
        return views[name]

    def load_unlabeled(self, source, cfg, size):
        from tlkeras.data.datasets import load_unlabeled_images

        return load_unlabeled_images(source, cfg, size)

    def with_training(self, bundle, examples, cfg, size):
        from tlkeras.data.datasets import with_training_images

        return with_training_images(bundle, examples, cfg, size)

    def with_split(self, bundle, train, val, cfg, size):
        from tlkeras.data.datasets import build_pipeline, with_training_images

        bundle = with_training_images(bundle, train, cfg, size)
        import dataclasses

        return dataclasses.replace(bundle, val_examples=val, val=build_pipeline(
            val, size, cfg.batch_size, training=False, cache=bundle.cached, seed=cfg.seed))

    def input_options(self, cfg):
        return {"max_image_pixels": cfg.max_image_pixels}

    def evaluation_pipeline(self, examples, model, batch_size):
        from tlkeras.data.datasets import build_pipeline
        return build_pipeline(examples, _size(model), batch_size, training=False, cache=False, seed=0)

    def pictures(self, examples, size):
        from tlkeras.data.images import decode_and_resize

        def images_of(rows):
            return [np.asarray(decode_and_resize(blob, size, examples.max_pixels)) for blob in examples.encoded(rows)]

        return images_of

    # === Serving ===

    def serving_functions(self, outputs, model):
        import tensorflow as tf

        from tlkeras.data.images import decode_and_resize, image_error, prepare_image
        size, limit = _size(model), _max_pixels(model)
        blank = tf.zeros([size[0], size[1], 3], tf.float32)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve_bytes(image_bytes):
            # Each item's header is checked first (an empty or non-image item, a header declaring no pixels or more
            # than max_image_pixels): such an item gets its reason in `error` and NaN scores, the others their
            # answers. What only decoding finds (damage past the header) fails the request (INVALID_ARGUMENT).
            errors = tf.map_fn(lambda b: image_error(b, limit), image_bytes, fn_output_signature=tf.string)
            fine = tf.equal(errors, "")
            images = tf.map_fn(
                lambda item: tf.cond(item[1], lambda: decode_and_resize(item[0], size, limit), lambda: blank),
                (image_bytes, fine),
                fn_output_signature=tf.TensorSpec([size[0], size[1], 3], tf.float32),
            )
            return {**answer_batch(outputs, images, fine), "error": errors}

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="images")])
        def serve_images(images):
            return answer_batch(outputs, prepare_image(images, size))

        return {"serving_default": serve_bytes, "serving_images": serve_images}

    def export_samples(self, examples, count, task):
        return examples.sample_bytes(count, task)

    def synthetic_samples(self, model, count: int = 4):
        """Deterministic PNG-encoded noise images of a few sizes."""
        import tensorflow as tf

        rng = np.random.default_rng(0)
        h, w = _size(model)
        shapes = [(h, w), (h * 2, w + 7), (max(h // 2, 1), w * 2), (h + 3, h + 3)]
        return [
            tf.io.encode_png(rng.integers(0, 256, (*shapes[i % len(shapes)], 3), dtype=np.uint8)).numpy()
            for i in range(count)
        ]

    def model_batch(self, samples, model):
        import tensorflow as tf

        from tlkeras.data.images import decode_and_resize
        size = _size(model)
        return tf.stack([decode_and_resize(tf.constant(b), size, _max_pixels(model)) for b in samples])

    def card(self, model):
        from tlkeras.modelinfo import get_preprocessing

        preprocessing = get_preprocessing(model)
        mode = preprocessing.mode if preprocessing is not None else None
        height, width = _size(model)
        return {
            "task": "image classification",
            "image_size": [height, width],
            "inputs": {
                "serving_default": "image_bytes: encoded JPEG/PNG/BMP/GIF/WebP, decoded to RGB and resized (bilinear, "
                                   f"aspect not kept) to {height}x{width} inside the graph; `error` says why an item "
                                   "was not answered (empty, not an image, a header with no pixels or above "
                                   "max_image_pixels), '' for the answered ones",
                "serving_images": "images: float32 RGB pixels in [0, 255], any size, resized inside the graph",
            },
            "preprocessing": f"the backbone's own normalisation inside the model ({mode or 'see the model'})",
        }

    # === Prediction ===

    def collect(self, items):
        from tlkeras.data.images import is_image_file

        files = []
        for item in items:
            if os.path.isdir(item):
                for dirpath, dirnames, filenames in os.walk(item):
                    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                    files.extend(os.path.join(dirpath, f) for f in sorted(filenames) if is_image_file(f))
            else:
                files.append(item)
        return [({"path": path}, path) for path in files]  # read a batch at a time, in `serve`

    def serve(self, serve, payloads):
        """`payloads` are file paths: read here, one batch at a time, so memory holds one batch."""
        import tensorflow as tf

        blobs, skipped = {}, []
        for i, path in enumerate(payloads):
            try:
                with open(path, "rb") as f:
                    blobs[i] = f.read()
            except OSError as e:
                skipped.append((i, e.strerror or str(e)))
        if not blobs:
            return [], skipped
        try:
            out = serve(image_bytes=tf.constant(list(blobs.values())))
            probs = out["probabilities"].numpy()
            errors = out["error"].numpy() if "error" in out else [b""] * len(blobs)  # (older exports have none)
            served = [(i, p) for (i, p), e in zip(zip(blobs, probs), errors) if not e]
            skipped += [(i, _served_error(blobs[i], e.decode())) for i, e in zip(blobs, errors) if e]
            return served, sorted(skipped)
        except tf.errors.InvalidArgumentError:
            pass
        served = []  # one file broke the batch: find it by serving the files one at a time
        for i, blob in blobs.items():
            try:
                out = serve(image_bytes=tf.constant([blob]))
                if "error" in out and out["error"].numpy()[0]:
                    skipped.append((i, _served_error(blob, out["error"].numpy()[0].decode())))
                else:
                    served.append((i, out["probabilities"].numpy()[0]))
            except tf.errors.InvalidArgumentError as e:
                skipped.append((i, _served_error(blob, e.message)))
        return served, sorted(skipped)

    def example_payloads(self, examples, rows):
        return examples.encoded(rows)


def _served_error(blob: bytes, message: str) -> str:
    """What the serving graph refused, in words: the header's size where it says so."""
    import re

    from tlkeras.data.images import image_problem

    found = re.search(r"image of (\d+)x(\d+) pixels is above max_image_pixels \((\d+)\)", message)
    if found:
        height, width, limit = (int(v) for v in found.groups())
        return (f"an image of {width}x{height} pixels ({height * width / 1e6:.3g} megapixels), above the model's "
                f"max_image_pixels ({limit / 1e6:.3g} megapixels): refused before decoding")
    return image_problem(blob, 0) or "not a decodable image"


def _max_pixels(model):
    """The model's max_image_pixels (None: the default, `tlkeras.config.MAX_IMAGE_PIXELS`)."""
    from tlkeras.modelinfo import model_info

    return model_info(model).input_options.get("max_image_pixels")


def answer_batch(outputs, images, fine=None):
    """`outputs(images)` for a batch of any size - an empty one gives empty outputs (the model runs on one blank image,
    whose answer is dropped) - with the items not `fine` masked: NaN scores, "" names, 0 counts."""
    import tensorflow as tf

    count = tf.shape(images)[0]
    padded = tf.cond(count > 0, lambda: images,
                     lambda: tf.zeros(tf.concat([[1], tf.shape(images)[1:]], 0), images.dtype))
    padded.set_shape(images.shape)
    out = {name: value[:count] for name, value in outputs(padded).items()}
    if fine is None:
        return out

    def masked(value):
        keep = tf.reshape(fine, [-1] + [1] * (value.shape.rank - 1))
        keep = tf.broadcast_to(keep, tf.shape(value))
        if value.dtype.is_floating:
            return tf.where(keep, value, tf.constant(float("nan"), value.dtype))
        if value.dtype == tf.string:
            return tf.where(keep, value, tf.constant(""))
        return tf.where(keep, value, tf.zeros_like(value))

    return {name: masked(value) for name, value in out.items()}


def _size(model) -> tuple[int, int]:
    """(height, width) of an image model's input."""
    _, height, width, _ = model.input_shape
    return int(height), int(width)


CROP_SIDE = 0.875  # each TTA crop keeps 7/8 of the image's height and width


def crop_boxes(count: int) -> list[tuple]:
    """(y1, x1, y2, x2) in [0, 1] of `count` TTA crops of CROP_SIDE: the centre, the four corners, the middles of the
    four edges, in that order.

    >>> crop_boxes(2)
    [(0.0625, 0.0625, 0.9375, 0.9375), (0.0, 0.0, 0.875, 0.875)]
    """
    m = 1 - CROP_SIDE
    corners = [(m / 2, m / 2), (0.0, 0.0), (0.0, m), (m, 0.0), (m, m), (0.0, m / 2), (m, m / 2), (m / 2, 0.0),
               (m / 2, m)]
    return [(y, x, y + CROP_SIDE, x + CROP_SIDE) for y, x in corners[:count]]


def _crop_view(box):
    """A batch of images [N, H, W, C] -> the same crop of each, resized back to H x W (bilinear)."""
    import tensorflow as tf

    def view(images):
        images = tf.convert_to_tensor(images)
        count = tf.shape(images)[0]
        boxes = tf.tile(tf.constant([box], tf.float32), [count, 1])
        cropped = tf.image.crop_and_resize(tf.cast(images, tf.float32), boxes, tf.range(count), tf.shape(images)[1:3])
        return tf.cast(cropped, images.dtype)

    return view

