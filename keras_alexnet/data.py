"""Image sources: a folder of class sub-folders, any TFDS dataset, or the embedded default.

Every source gives `tf.data` datasets of `(uint8 RGB image of any size, int64
label)`, the class names and the number of examples per split. Augmentation,
batching and normalisation live in `keras_alexnet.presets`.
"""

import dataclasses
import os
import warnings
from pathlib import Path

import numpy as np
import tensorflow as tf

# The files TFDS's imagenet2012 builds from (it cannot download them).
IMAGENET_MANUAL_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
DEFAULT_DATASET_DIR = Path("~/.keras/datasets/keras_alexnet_shapes").expanduser()


class NoUsableImagesError(ValueError):
    """A source holds no image that can be decoded."""


@dataclasses.dataclass
class Source:
    """Decoded examples of one dataset.

    Attributes:
        train: `tf.data.Dataset` of `(uint8 image (H, W, 3), int64 label)`.
        validation: the same for validation, or `None`.
        class_names: label index -> class name.
        counts: number of examples per split, e.g. `{"train": 900, "validation": 100}`
            (`None` where TFDS does not know it).
        skipped: files that could not be decoded and were left out.
        name: a short description (folder path or TFDS name).
    """

    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    class_names: list
    counts: dict
    skipped: list = dataclasses.field(default_factory=list)
    name: str = ""

    @property
    def num_classes(self):
        return len(self.class_names)


def decode_rgb(contents):
    """Any JPEG/PNG/GIF/BMP bytes -> uint8 RGB (grayscale, RGBA, CMYK included)."""
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def to_rgb(image):
    """uint8 (H, W, 1 or 3) -> (H, W, 3)."""
    if image.shape[-1] == 1:
        return tf.image.grayscale_to_rgb(image)
    return image


# ------------------------------------------------------------ image folders


def _list_class_files(root):
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder not found: {root}")
    class_dirs = sorted(path for path in root.iterdir()
                        if path.is_dir() and not path.name.startswith("."))
    if not class_dirs:
        raise NoUsableImagesError(
            f"{root} has no class sub-folders; expected {root}/<class name>/<image files>."
        )
    return {
        path.name: sorted(str(file) for file in path.rglob("*") if file.is_file())
        for path in class_dirs
    }


def _usable_files(paths):
    """The subset of `paths` TensorFlow can decode, found in one parallel pass."""
    if not paths:
        return set()
    indices = tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), paths))

    def try_decode(index, path):
        image = decode_rgb(tf.io.read_file(path))
        # Touch the pixels so truncated files fail here rather than in training.
        with tf.control_dependencies([tf.debugging.assert_positive(tf.size(image))]):
            return tf.identity(index)

    checked = indices.map(try_decode, num_parallel_calls=tf.data.AUTOTUNE)
    checked = checked.ignore_errors()
    return {paths[int(index)] for index in checked.as_numpy_iterator()}


def _examples_dataset(files, labels):
    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.constant(files, tf.string), tf.constant(labels, tf.int64))
    )
    return dataset.map(lambda path, label: (decode_rgb(tf.io.read_file(path)), label),
                       num_parallel_calls=tf.data.AUTOTUNE)


def _scan_split(root, class_names):
    """(files, labels, skipped) of a folder with one sub-folder per class."""
    files_by_class = _list_class_files(root)
    all_files = [file for name in class_names for file in files_by_class.get(name, [])]
    usable = _usable_files(all_files)
    files, labels, empty = [], [], []
    for label, name in enumerate(class_names):
        kept = [file for file in files_by_class.get(name, []) if file in usable]
        if not kept:
            empty.append(name)
        files += kept
        labels += [label] * len(kept)
    skipped = [file for file in all_files if file not in usable]
    if not files:
        raise NoUsableImagesError(
            f"No usable image in {root}: {len(skipped)} file(s) could not be decoded "
            "as JPEG, PNG, GIF or BMP."
        )
    if empty:
        warnings.warn(f"Class folder(s) with no usable image in {root}: {empty}",
                      stacklevel=3)
    return files, labels, skipped


def image_folder(root, validation_fraction=0.1, seed=0):
    """Images in `root/<class>/...` (or `root/train/<class>` and `root/val/<class>`).

    Every file is checked once: files TensorFlow cannot decode (corrupt or
    truncated images, empty or non-image files) are left out and named in a
    warning. Grayscale, RGBA, CMYK and palette images become RGB.

    Args:
        root: the folder.
        validation_fraction: without `train/` and `val/` sub-folders, the
            fraction of each class held out for validation, chosen
            deterministically from `seed`. 0 gives no validation split.
        seed: seed of the held-out choice.

    Returns:
        A `Source`.
    """
    root = Path(root).expanduser()
    if not 0 <= validation_fraction < 1:
        raise ValueError(
            f"`validation_fraction` must be in [0, 1). Received: {validation_fraction!r}"
        )
    validation_dir = next((root / name for name in ("val", "validation")
                           if (root / name).is_dir()), None)
    if (root / "train").is_dir() and validation_dir is not None:
        class_names = sorted(_list_class_files(root / "train"))
        train = _scan_split(root / "train", class_names)
        validation = _scan_split(validation_dir, class_names)
    else:
        class_names = sorted(_list_class_files(root))
        files, labels, skipped = _scan_split(root, class_names)
        rng = np.random.default_rng(seed)
        held_out = np.zeros(len(files), bool)
        labels_array = np.asarray(labels)
        for label in range(len(class_names)):
            members = np.flatnonzero(labels_array == label)
            count = int(round(validation_fraction * len(members)))
            held_out[rng.permutation(members)[:count]] = True
        pick = lambda mask: ([f for f, m in zip(files, mask) if m],  # noqa: E731
                             labels_array[mask].tolist())
        train = (*pick(~held_out), skipped)
        validation = (*pick(held_out), []) if held_out.any() else None

    skipped = train[2] + (validation[2] if validation else [])
    if skipped:
        shown = ", ".join(skipped[:10]) + (" ..." if len(skipped) > 10 else "")
        warnings.warn(f"Skipped {len(skipped)} file(s) that are not decodable images: {shown}",
                      stacklevel=2)
    return Source(
        train=_examples_dataset(train[0], train[1]),
        validation=_examples_dataset(validation[0], validation[1]) if validation else None,
        class_names=class_names,
        counts={"train": len(train[0]),
                **({"validation": len(validation[0])} if validation else {})},
        skipped=skipped,
        name=str(root),
    )


# ----------------------------------------------------------------- TFDS


def tfds_dataset(name, data_dir=None, manual_dir=None, train_split="train",
                 validation_split=None, validation_fraction=0.1):
    """A TensorFlow Datasets dataset with an image feature and a class label.

    The dataset must already be prepared in `data_dir`, or be buildable
    offline: `imagenet2012` builds from `ILSVRC2012_img_train.tar` and
    `ILSVRC2012_img_val.tar` in `manual_dir`.

    Args:
        name: TFDS name, e.g. `"imagenet2012"`, `"cifar10"`, `"mnist"`.
        data_dir: TFDS data folder (default: TFDS's, `~/tensorflow_datasets`).
        manual_dir: folder of manually downloaded files.
        train_split: the training split.
        validation_split: the validation split; by default `"validation"`
            or `"test"`, whichever exists, else the last `validation_fraction`
            of the training split.
        validation_fraction: used only when there is no validation split.

    Returns:
        A `Source`.
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as error:  # tfds raises several types for unknown names
        raise ValueError(f"Unknown TFDS dataset {name!r}: {error}") from error
    image_key, label_key = _image_and_label_keys(builder.info.features, name)

    if not _is_prepared(builder):
        if name.split(":")[0].split("/")[0] == "imagenet2012":
            manual = Path(manual_dir or Path(builder.data_dir).parent / "downloads" / "manual")
            missing = [file for file in IMAGENET_MANUAL_FILES if not (manual / file).exists()]
            if missing:
                raise FileNotFoundError(
                    f"imagenet2012 is built from {list(IMAGENET_MANUAL_FILES)}, which must "
                    f"be downloaded by hand from image-net.org into {manual} "
                    f"(--manual-dir); missing: {missing}."
                )
        config = tfds.download.DownloadConfig(manual_dir=manual_dir)
        try:
            builder.download_and_prepare(download_config=config)
        except Exception as error:
            raise RuntimeError(
                f"TFDS dataset {name!r} is not prepared in {builder.data_dir} and could "
                f"not be built (no downloads are possible offline): {error}"
            ) from error

    splits = builder.info.splits
    if validation_split is None:
        validation_split = next((split for split in ("validation", "test") if split in splits),
                                None)
    if validation_split is None and validation_fraction > 0:
        percent = int(round(100 * (1 - validation_fraction)))
        train_split, validation_split = f"{train_split}[:{percent}%]", f"{train_split}[{percent}%:]"

    def load(split):
        dataset = builder.as_dataset(split=split, shuffle_files=False)
        return dataset.map(
            lambda example: (to_rgb(example[image_key]), tf.cast(example[label_key], tf.int64)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )

    def count(split):  # None when TFDS has no split metadata (e.g. under mock_data)
        return splits[split].num_examples if splits else None

    counts = {"train": count(train_split)}
    if validation_split:
        counts["validation"] = count(validation_split)
    return Source(
        train=load(train_split),
        validation=load(validation_split) if validation_split else None,
        class_names=list(builder.info.features[label_key].names),
        counts=counts,
        name=name,
    )


def _is_prepared(builder):
    try:
        return builder.is_prepared()
    except Exception:
        return False


def _image_and_label_keys(features, name):
    import tensorflow_datasets as tfds

    images = [key for key, feature in features.items()
              if isinstance(feature, tfds.features.Image)]
    labels = [key for key, feature in features.items()
              if isinstance(feature, tfds.features.ClassLabel)]
    if not images or not labels:
        raise ValueError(
            f"TFDS dataset {name!r} needs an image feature and a class label; it has "
            f"{sorted(features.keys())}."
        )
    return images[0], labels[0]


# ------------------------------------------------- the embedded default dataset

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
    """
    root = Path(root).expanduser()
    marker = root / ".complete"
    if not marker.exists():
        write_synthetic_image_folder(root, images_per_class=images_per_class,
                                     image_size=image_size)
        marker.write_text(f"{images_per_class} {image_size}\n")
    return image_folder(root, validation_fraction=0.1)


def from_arguments(data=None, dataset=None, data_dir=None, manual_dir=None,
                   validation_fraction=0.1):
    """The source a command line asks for: a folder, a TFDS name, or the default."""
    if data and dataset:
        raise ValueError("Give either a folder (--data) or a TFDS name (--dataset), not both.")
    if data:
        return image_folder(os.fspath(data), validation_fraction=validation_fraction)
    if dataset:
        return tfds_dataset(dataset, data_dir=data_dir, manual_dir=manual_dir,
                            validation_fraction=validation_fraction)
    return default_dataset()
