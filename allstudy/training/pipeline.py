"""Many images into one cached array, and tf.data pipelines for training.

Each file becomes model input through :func:`allstudy.data.preprocess.load_image`, the same
conversion the Predictor and the guard use.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from allstudy.core.atomic import cached_array
from allstudy.core.hashing import short_hash
from allstudy.data.preprocess import load_image


def load_images(
    root: str | os.PathLike,
    paths: list[str],
    size: int,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
    mode: str = "original",
) -> np.ndarray:
    """Load many files as one (N, size, size, 3) uint8 array, cached in ``cache_dir`` when given."""
    root = Path(root)

    def decode() -> np.ndarray:
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            arrays = list(
                tqdm(
                    pool.map(lambda p: load_image(root / p, size, mode), paths),
                    total=len(paths),
                    desc=f"loading images at {size}px ({mode})",
                    unit="img",
                    disable=not progress,
                )
            )
        return np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.uint8)

    if cache_dir is None:
        return decode()
    key = short_hash("\n".join([str(root.resolve()), str(size), *paths]))
    suffix = "" if mode == "original" else f"-{mode}"
    return cached_array(Path(cache_dir) / f"images-{size}px-{key}{suffix}.npy", decode)


def augment(images, seed, colour: bool = True):
    """Random flips, 90-degree rotations and (with ``colour``) mild colour jitter, on a batch of 0..255 float images.

    ``seed`` is a shape-[2] integer tensor; the ops are stateless, so the same seed gives the same
    augmentation, and tf.data may run batches in parallel even with TensorFlow's op determinism on
    (stateful random ops force it to run them one at a time).
    """
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 7)
    images = tf.image.stateless_random_flip_left_right(images, seeds[0])
    images = tf.image.stateless_random_flip_up_down(images, seeds[1])
    images = tf.image.rot90(images, k=tf.random.stateless_uniform([], seeds[2], 0, 4, dtype=tf.int32))
    if not colour:
        return images
    images = images / 255.0
    images = tf.image.stateless_random_brightness(images, 0.08, seeds[3])
    images = tf.image.stateless_random_contrast(images, 0.9, 1.1, seeds[4])
    images = tf.image.stateless_random_saturation(images, 0.9, 1.1, seeds[5])
    images = tf.image.stateless_random_hue(images, 0.02, seeds[6])
    return tf.clip_by_value(images, 0.0, 1.0) * 255.0


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray | None,
    batch_size: int,
    shuffle: bool = False,
    augmented: bool = False,
    seed: int = 0,
    colour_jitter: bool = True,
):
    """A batched, prefetched tf.data pipeline of float32 0..255 images (and one-hot labels when given).

    Shuffling and augmentation follow ``seed``: each pass (epoch) draws anew, and a run repeats exactly.
    """
    import tensorflow as tf

    data = tf.data.Dataset.from_tensor_slices(images if labels is None else (images, labels))
    if shuffle:
        data = data.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    data = data.batch(batch_size)
    cast = (lambda x: tf.cast(x, tf.float32)) if labels is None else (lambda x, y: (tf.cast(x, tf.float32), y))
    data = data.map(cast, num_parallel_calls=tf.data.AUTOTUNE)
    if augmented:  # one stateless seed per batch, from a seeded stream that draws anew each epoch
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        data = tf.data.Dataset.zip(data, seeds)
        data = data.map(
            (lambda x, s: augment(x, s, colour=colour_jitter))
            if labels is None
            else (lambda xy, s: (augment(xy[0], s, colour=colour_jitter), xy[1])),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return data.prefetch(tf.data.AUTOTUNE)


def class_weights(labels: np.ndarray, n_classes: int) -> dict[int, float]:
    """Balanced class weights (scikit-learn's n / (k * count)) for integer labels."""
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    result = {int(c): 1.0 for c in range(n_classes)}
    result.update({int(c): float(w) for c, w in zip(present, weights, strict=True)})
    return result
