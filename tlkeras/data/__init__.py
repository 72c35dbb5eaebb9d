"""Input pipelines: image decoding (shared with serving), sources, splits and augmentation."""

from tlkeras.data.datasets import DataBundle, Examples, build_pipeline, make_datasets, stratified_split
from tlkeras.data.images import decode_and_resize, decode_image, load_image, prepare_image

__all__ = [
    "DataBundle",
    "Examples",
    "build_pipeline",
    "make_datasets",
    "stratified_split",
    "decode_and_resize",
    "decode_image",
    "load_image",
    "prepare_image",
]
