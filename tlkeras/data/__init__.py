"""Input pipelines: image decoding (shared with serving), sources, splits and augmentation."""

from tlkeras._lazy import lazy_names as _lazy_names

__getattr__, __dir__ = _lazy_names(__name__, {
    **{name: ("tlkeras.data.datasets", name) for name in
       ("DataBundle", "Examples", "build_pipeline", "make_datasets", "stratified_split")},
    **{name: ("tlkeras.data.images", name) for name in
       ("decode_and_resize", "decode_image", "load_image", "prepare_image")},
})

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
