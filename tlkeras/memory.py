"""Memory that NumPy and TensorFlow share: aligned buffers a tensor can take without a copy, and tf.data pipelines of
batches gathered from such arrays."""

from __future__ import annotations


# TensorFlow's kernels (Eigen) take tensor memory aligned to 64 bytes: a shared NumPy buffer that is not
# stops the process ("Check failed: IsAligned()", seen in a gather).
TENSOR_ALIGNMENT = 64


def aligned_empty(shape, dtype):
    """np.empty whose buffer starts on a TENSOR_ALIGNMENT boundary, so `as_tensor` can share it."""
    import numpy as np

    dtype = np.dtype(dtype)
    if dtype.hasobject:  # Python objects (e.g. strings): TensorFlow copies them anyway
        return np.empty(shape, dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(size + TENSOR_ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % TENSOR_ALIGNMENT
    return raw[start:start + size].view(dtype).reshape(shape)


def without_graph_rewrites(ds):
    """`ds` with tf.data's default optimisations off. Before a pipeline runs, tf.data rewrites its graph
    (fusing maps and batches, removing no-ops), and the rewrite copies every tensor the pipeline holds: a
    dataset over 188 MB of arrays in memory grew the process by 201 MB when first iterated, and by
    16 MB with them off (benchmarks/RESULTS.md, issue 17). For pipelines whose work is a gather from
    memory, there is nothing for them to fuse."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_optimization.apply_default_optimizations = False
    return ds.with_options(options)


def gathered_batches(inputs, labels, batch_size: int, *, shuffle: bool, seed=None, repeat: bool = False,
                     drop_remainder: bool = False):
    """A tf.data pipeline of (inputs, labels) batches over arrays held in memory (`inputs` an array or a
    tuple of them), each batch gathered by row numbers: the shuffle moves row numbers, not rows, so the
    arrays are held once - a shuffle buffer of rows holds a copy of each row TensorFlow cannot slice in
    place (any row whose size is not a multiple of 64 bytes), and tf.data's rewrite would copy them all
    (`without_graph_rewrites`). The same order as shuffling the rows themselves with the same seed.

    >>> import numpy as np
    >>> ds = gathered_batches(np.arange(10.0).reshape(5, 2), np.arange(5), 2, shuffle=False)
    >>> [labels.tolist() for _, labels in ds.as_numpy_iterator()]
    [[0, 1], [2, 3], [4]]
    """
    import numpy as np
    import tensorflow as tf

    n = len(labels)
    rows = tf.data.Dataset.range(n)
    if shuffle:
        rows = rows.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        rows = rows.repeat()
    rows = rows.batch(batch_size, drop_remainder=drop_remainder)
    arrays = tf.nest.map_structure(as_tensor, (inputs, np.asarray(labels)))
    whole = tf.data.Dataset.from_tensors(arrays).repeat()
    ds = tf.data.Dataset.zip(rows, whole).map(
        lambda r, xy: tf.nest.map_structure(lambda t: tf.gather(t, r), xy), num_parallel_calls=tf.data.AUTOTUNE)
    return without_graph_rewrites(ds)


def as_tensor(array):
    """A tf.Tensor over a NumPy array's memory, without a copy where TensorFlow allows it (a contiguous
    array aligned as TensorFlow needs, e.g. from `aligned_empty`; others are copied).

    tf.data.Dataset.from_tensor_slices copies NumPy arrays; given this tensor it does not, so a
    gigabyte of cached pixels is held once, not twice (if the pipeline is not rewritten either:
    `without_graph_rewrites`).
    """
    import numpy as np
    import tensorflow as tf

    array = np.ascontiguousarray(array)
    if array.ctypes.data % TENSOR_ALIGNMENT:
        return tf.convert_to_tensor(array)
    try:
        return tf.experimental.dlpack.from_dlpack(array.__dlpack__())
    except Exception:  # dtype or layout DLPack cannot share: copy
        return tf.convert_to_tensor(array)
