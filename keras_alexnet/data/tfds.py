"""Any TensorFlow Datasets dataset with an image and a class label, as a `Source`."""

import difflib
import os
from pathlib import Path

import tensorflow as tf

from keras_alexnet.data.source import Source, Split

# The files TFDS's imagenet2012 builds from (it cannot download them).
IMAGENET_MANUAL_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
# TFDS first looks for a prepared copy on Google Cloud Storage; a request
# there tells at once whether downloads can work.
CONNECTIVITY_CHECK_URL = "https://storage.googleapis.com/tfds-data/"


class OfflineError(RuntimeError):
    """A TFDS dataset needs downloading and this machine cannot reach the internet."""


def to_rgb(image):
    """uint8 (H, W, 1 or 3) -> (H, W, 3)."""
    if image.shape[-1] == 1:
        return tf.image.grayscale_to_rgb(image)
    return image


def tfds_dataset(name, data_dir=None, manual_dir=None, train_split="train",
                 validation_split=None, validation_fraction=0.1):
    """A TensorFlow Datasets dataset with an image feature and a class label.

    The dataset must already be prepared in `data_dir`, or be buildable:
    `imagenet2012` builds offline from `ILSVRC2012_img_train.tar` and
    `ILSVRC2012_img_val.tar` in `manual_dir`; other datasets are downloaded,
    which needs the internet (without it this fails at once with
    `OfflineError`, saying how to prepare the data on another machine).

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

    data_dir = os.path.expanduser(data_dir) if data_dir else None
    manual_dir = os.path.expanduser(manual_dir) if manual_dir else None
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        close = difflib.get_close_matches(name, tfds.list_builders(), n=5, cutoff=0.6)
        raise ValueError(
            f"Unknown TFDS dataset {name!r}."
            + (f" Did you mean {close}?" if close else "")
            + " `tfds.list_builders()` lists them all."
        ) from None
    except Exception as error:  # a bad version or config in the name
        raise ValueError(f"Cannot load TFDS dataset {name!r}: {error}") from error
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
        else:
            _check_online(name, builder.data_dir)
        config = tfds.download.DownloadConfig(manual_dir=manual_dir)
        try:
            builder.download_and_prepare(download_config=config)
        except Exception as error:
            raise RuntimeError(
                f"TFDS dataset {name!r} is not prepared in {builder.data_dir} and could "
                f"not be built: {error}"
            ) from error

    splits = builder.info.splits
    if validation_split is None:
        validation_split = next((split for split in ("validation", "test") if split in splits),
                                None)
    if validation_split is None and validation_fraction > 0:
        percent = int(round(100 * (1 - validation_fraction)))
        train_split, validation_split = f"{train_split}[:{percent}%]", f"{train_split}[{percent}%:]"

    def examples(dataset):
        return dataset.map(
            lambda example: (to_rgb(example[image_key]), tf.cast(example[label_key], tf.int64)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )

    def reader(split):
        def read(shuffle, seed, epoch, skipped_log):
            # TFDS shuffles examples when it prepares a dataset; `shuffle`
            # reads its shards in a new order every epoch.
            read_config = tfds.ReadConfig(shuffle_seed=seed, shuffle_reshuffle_each_iteration=True)
            return examples(builder.as_dataset(split=split, shuffle_files=shuffle,
                                               read_config=read_config))

        def read_range(start, stop, skipped_log):
            # TFDS's own order: it shuffled the examples when it prepared them.
            return examples(builder.as_dataset(
                split=_absolute_range(split, splits, start, stop), shuffle_files=False))

        # None when TFDS has no split metadata (e.g. under mock_data).
        return Split(count=splits[split].num_examples if splits else None, read=read,
                     read_range=read_range)

    source_splits = {"train": reader(train_split)}
    if validation_split:
        source_splits["validation"] = reader(validation_split)
    return Source(splits=source_splits,
                  class_names=list(builder.info.features[label_key].names), name=name,
                  identify=lambda: {
                      "tfds": builder.info.full_name, "version": str(builder.info.version),
                      "splits": {split: [spec, source_splits[split].count]
                                 for split, spec in (("train", train_split),
                                                     ("validation", validation_split))
                                 if split in source_splits}})


def _absolute_range(split, split_infos, start, stop):
    """The TFDS split string of positions `[start, stop)` of `split` (e.g. `"train[:90%]"`)."""
    import tensorflow_datasets as tfds

    pieces, offset = [], 0
    for part in tfds.core.ReadInstruction.from_spec(split).to_absolute(split_infos):
        # TFDS leaves out a bound at the split's start or end (None).
        first = part.from_ or 0
        length = (split_infos[part.splitname].num_examples if part.to is None
                  else part.to) - first
        low, high = max(start - offset, 0), min(stop - offset, length)
        if low < high:
            pieces.append(f"{part.splitname}[{first + low}:{first + high}]")
        offset += length
    return "+".join(pieces)


def _check_online(name, data_dir):
    """Raises `OfflineError` at once when downloads cannot work (TFDS retries for minutes)."""
    import requests

    try:
        requests.head(CONNECTIVITY_CHECK_URL, timeout=10)
    except requests.RequestException as error:
        raise OfflineError(
            f"TFDS dataset {name!r} is not prepared in {data_dir} and this machine cannot "
            f"download it ({type(error).__name__} reaching {CONNECTIVITY_CHECK_URL}). "
            "Prepare it on a machine with internet access: python -c \"import "
            f"tensorflow_datasets as tfds; tfds.builder('{name}').download_and_prepare()\", "
            f"then copy its folder under ~/tensorflow_datasets/ to {data_dir} here "
            "(or pass its parent with --data-dir)."
        ) from None


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
