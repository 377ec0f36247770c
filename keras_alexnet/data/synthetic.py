"""The embedded default dataset: generated shape images written as real JPEG files."""

import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_alexnet.data.folder import image_folder

DEFAULT_DATASET_DIR = Path("~/.keras/datasets/keras_alexnet_shapes").expanduser()
# Written last into a generated dataset: the folder is complete.
COMPLETE_MARKER = ".complete"

SHAPE_CLASSES = ("circle", "square", "triangle", "cross", "horizontal_stripes",
                 "vertical_stripes", "ring", "diamond", "checkerboard", "dots")


def _draw_shape(kind, size, rng):
    """A float mask in [0, 1] of one shape class at a random position and scale."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    cy, cx = rng.uniform(0.35, 0.65, 2)
    radius = rng.uniform(0.18, 0.3)
    dy, dx = yy - cy, xx - cx
    period = rng.uniform(0.12, 0.2)
    masks = {
        "circle": dy**2 + dx**2 < radius**2,
        "square": (abs(dy) < radius * 0.85) & (abs(dx) < radius * 0.85),
        "triangle": (dy > -radius) & (dy < radius) & (abs(dx) < (dy + radius) / 2),
        "cross": ((abs(dy) < radius * 0.3) | (abs(dx) < radius * 0.3))
        & (abs(dy) < radius) & (abs(dx) < radius),
        "horizontal_stripes": np.sin(2 * np.pi * yy / period) > 0,
        "vertical_stripes": np.sin(2 * np.pi * xx / period) > 0,
        "ring": (dy**2 + dx**2 < radius**2) & (dy**2 + dx**2 > (radius * 0.6) ** 2),
        "diamond": abs(dy) + abs(dx) < radius,
        "checkerboard": (np.floor(yy / period) + np.floor(xx / period)) % 2 == 0,
        "dots": (np.sin(2 * np.pi * yy / period) > 0.6) & (np.sin(2 * np.pi * xx / period) > 0.6),
    }
    return masks[kind].astype(np.float32)


def write_synthetic_image_folder(root, classes=len(SHAPE_CLASSES), images_per_class=100,
                                 image_size=(96, 96), seed=0, quality=90):
    """Writes `root/<class>/<n>.jpg`: coloured shapes on noisy backgrounds.

    Real JPEG files, so the whole input pipeline (file listing, decoding,
    resizing, augmentation) runs exactly as on ImageNet. Each class is a shape
    or texture (`SHAPE_CLASSES`); colours, positions, sizes and noise vary.
    """
    if not 1 <= classes <= len(SHAPE_CLASSES):
        raise ValueError(f"`classes` must be in [1, {len(SHAPE_CLASSES)}]. Received: {classes}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    height, width = image_size
    size = max(height, width)
    for kind in SHAPE_CLASSES[:classes]:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for index in range(images_per_class):
            mask = _draw_shape(kind, size, rng)[:height, :width, None]
            foreground, background = rng.uniform(0, 255, (2, 1, 1, 3))
            image = mask * foreground + (1 - mask) * background
            image += rng.normal(0, 12, image.shape)
            pixels = np.clip(image, 0, 255).astype(np.uint8)
            encoded = tf.io.encode_jpeg(pixels, quality=quality)
            tf.io.write_file(str(root / kind / f"{index:04d}.jpg"), encoded)
    return root


def default_dataset(root=DEFAULT_DATASET_DIR, images_per_class=120, image_size=(96, 96)):
    """The embedded default dataset: 10 classes of generated shape images (JPEG).

    Generated once into `root` (by default `~/.keras/datasets/keras_alexnet_shapes`)
    and reused; no download. 10% of each class is held out for validation.
    It is written to a temporary folder beside `root` and renamed into place,
    so processes that start together (the processes of a training run) never
    read a half-written image: each generates, the first rename wins, and the
    others delete their own copy and read the winner's.
    """
    root = Path(root).expanduser()
    if not (root / COMPLETE_MARKER).exists():
        if root.exists():  # left unfinished by a version that wrote in place
            _write_default_dataset(root, images_per_class, image_size)
        else:
            root.parent.mkdir(parents=True, exist_ok=True)
            staging = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex[:8]}"
            try:
                _write_default_dataset(staging, images_per_class, image_size)
                try:
                    os.rename(staging, root)
                except OSError:
                    if not (root / COMPLETE_MARKER).exists():  # not another process's
                        raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return image_folder(root, validation_fraction=0.1)


def _write_default_dataset(root, images_per_class, image_size):
    write_synthetic_image_folder(root, images_per_class=images_per_class, image_size=image_size)
    (root / COMPLETE_MARKER).write_text(f"{images_per_class} {image_size}\n")
