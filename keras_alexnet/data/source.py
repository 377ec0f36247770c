"""`Source`: a labelled image dataset, read split by split."""

import dataclasses
import functools
import hashlib
import os
import re
from typing import Callable

import tensorflow as tf


class NoUsableImagesError(ValueError):
    """A source holds no image that can be decoded."""


# The end of the messages that say so, in Python and in a folder's pipeline.
NOTHING_DECODES = "could be decoded as an image."


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of a source: its size and how to read it.

    Attributes:
        count: number of examples (from the listing or the dataset's
            metadata; `None` where unknown).
        read: `read(shuffle, seed, epoch, skipped_log) -> tf.data.Dataset`
            of decoded `(uint8 image (H, W, 3), int64 label)` (see
            `Source.examples`).
        read_range: `read_range(start, stop, skipped_log)`: the decoded
            examples at positions `[start, stop)` of a fixed order in which
            the classes are mixed, undecodable files skipped and named;
            consecutive ranges read every example once (what
            `keras_alexnet.data.prepare` writes shard by shard). `None` where
            the source cannot.
        read_units: `read_units(seed, epoch)`: one epoch of `(image, label,
            key)` in an order drawn from `(seed, epoch)`, whose first dataset
            is a `from_tensor_slices` of independent units (chunks of files,
            shards), so the tf.data service can split an epoch between its
            workers (`distributed_epoch`). `image` is a decoded uint8 image,
            or JPEG bytes where the source says so (`Source.jpeg_size`);
            `key` is an int64 unique to the example within the split (it
            seeds the example's augmentation). Undecodable files are named
            on the standard error of the process that decodes them. `None`
            where the source cannot.
    """

    count: int | None
    read: Callable
    read_range: Callable | None = None
    read_units: Callable | None = None


@dataclasses.dataclass
class Source:
    """A labelled image dataset: decoded examples per split, class names, counts.

    Every source gives `tf.data` datasets of `(uint8 RGB image of any size,
    int64 label)`. Augmentation, batching and normalisation live in
    `keras_alexnet.presets`.

    Attributes:
        splits: `{"train": Split, "validation": Split}` (validation optional).
        class_names: label index -> class name.
        skipped: files left out when the source was listed (names that are
            not valid UTF-8, say), and folders that could not be read.
            Files that turn out not to decode are skipped later, as the
            pipeline meets them (see `examples`).
        name: a short description (folder path or TFDS name), as given:
            `"ds"` and its absolute path are two names of one source.
        identify: `identify() -> dict` of what tells this source from any
            other (see `identity`); `None` where only the name does.
        prepared_size: set where every image is already a `prepared_size` x
            `prepared_size` square (a prepared folder, in any format): the
            `resize_size` to train it with, since any other would resize
            the squares again (`keras_alexnet.training.make_datasets`
            refuses that).
        jpeg_size: set where every image is stored as a `jpeg_size` x
            `jpeg_size` JPEG (a prepared folder): `Split.read_units` then
            gives the JPEG bytes undecoded, so a preset can decode only the
            window it crops (`tf.image.decode_and_crop_jpeg`).
    """

    splits: dict
    class_names: list
    skipped: list = dataclasses.field(default_factory=list)
    name: str = ""
    prepared_size: int | None = None
    jpeg_size: int | None = None
    identify: Callable | None = dataclasses.field(default=None, repr=False)

    @functools.cached_property
    def identity(self):
        """What this source is, as JSON: what `prepare` records and checks on resuming.

        A folder's: its resolved path and, per split, a digest of its files'
        names (relative to the folder) and sizes (`listing_digest`), computed
        when first asked (a `stat` per file), not when the folder is listed.
        A prepared folder's: the same, of its shards. A TFDS dataset's: its
        full name, version, and the split it reads as each split, with its
        size. A source without `identify`: its name.
        """
        return {"name": self.name} if self.identify is None else self.identify()

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def counts(self):
        """Examples per split, e.g. `{"train": 900, "validation": 100}` (`None` if unknown)."""
        return {name: split.count for name, split in self.splits.items()}

    def examples(self, split="train", shuffle=False, seed=None, epoch=None, skipped_log=None):
        """The decoded `(image, label)` examples of one split.

        Args:
            split: `"train"` or `"validation"`.
            shuffle: read the examples in a new order every epoch, shuffled
                before decoding (the file list of a folder, the shards of a
                TFDS dataset), so even a folder listed class by class gives
                well-mixed batches after a small decoded shuffle buffer.
            seed: seed of that order; `None` for fresh randomness. With a
                seed, every run reads the same sequence of epochs.
            epoch: an epoch number (int or scalar int64 tensor): the order is
                then drawn from `(seed, epoch)` alone, so a resumed run can
                read epoch `e` as it was (`TrainPreset.epochs` does). TFDS
                sources shuffle their shards with `seed` each iteration and
                ignore it.
            skipped_log: for folder sources, a file that receives the path of
                each file that cannot be decoded, one per line, when the
                pipeline meets it (by default they are printed to stderr).
                Such files are left out: an epoch may be a few images short.
        """
        return self._split(split).read(shuffle, seed, epoch, skipped_log)

    def check_usable(self, split="train"):
        """Raises `NoUsableImagesError` unless `split` holds an image that decodes.

        Files are decoded in listing order up to the first that does: one
        file for a usable split, every file of one where none does. Without
        this, such a split fails in the middle of a pipeline (a folder's) or
        gives epochs of no example forever (an empty prepared folder's).
        """
        count = self._split(split).count
        if count == 0:
            raise NoUsableImagesError(f"The {split!r} split of {self.name} holds no image.")
        try:
            # Names met on the way are named again by the pipelines that read them.
            found = any(True for _ in iterate_usable(
                self.examples(split, skipped_log=os.devnull).take(1)))
        except NoUsableImagesError:
            found = False
        if not found:
            raise NoUsableImagesError(
                f"No file of the {split!r} split of {self.name} ({count} files) "
                + NOTHING_DECODES)

    def units(self, split, seed, epoch):
        """One epoch of `(image, label, key)` in independent units (see `Split.read_units`).

        What the tf.data service splits between its workers, and what the
        presets read a prepared folder's JPEG bytes through.

        Args:
            split: `"train"` or `"validation"`.
            seed: seed of the epoch's order (`None` draws one).
            epoch: the epoch number (int or scalar int64 tensor).
        """
        read_units = self._split(split).read_units
        if read_units is None:
            raise ValueError(
                f"{self.name} cannot be split into units that tf.data service workers share "
                "(TFDS datasets cannot); prepare it first (keras_alexnet.data.prepare, or "
                "train.py --prepare DIR) and train on the prepared folder."
            )
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little")
        return read_units(seed, epoch)

    def _split(self, split):
        if split not in self.splits:
            raise ValueError(f"{self.name} has no {split!r} split; it has {list(self.splits)}.")
        return self.splits[split]

    @property
    def train(self):
        """The training examples in listing order (see `examples` to shuffle them)."""
        return self.examples("train")

    @property
    def validation(self):
        """The validation examples in order, or `None` if the source has none."""
        return self.examples("validation") if "validation" in self.splits else None


def iterate_usable(dataset):
    """Iterates `dataset`; a folder's pipeline where no file decodes raises `NoUsableImagesError`.

    The pipeline checks it with a TensorFlow assertion (see `folder.py`),
    which would end in an `InvalidArgumentError` and its graph trace; this
    raises its message alone. Any other error is raised as it is.
    """
    try:
        yield from dataset
    except tf.errors.InvalidArgumentError as error:
        found = re.search(r"\[([^\[\]]*" + re.escape(NOTHING_DECODES) + r")\]", error.message)
        if found is None:  # not a folder's own check
            raise
        raise NoUsableImagesError(found.group(1)) from None


def listing_digest(root, files_by_split):
    """`{split: SHA-256 of its files' names relative to `root`, in order, and sizes}`.

    Two folders of the same classes and counts give other digests unless
    they hold the same files; one folder named two ways gives one.
    """
    digests = {}
    for split, files in files_by_split.items():
        digest = hashlib.sha256()
        for file in files:
            try:
                size = os.stat(file).st_size
            except OSError:  # gone since the listing: a change like any other
                size = -1
            digest.update(f"{os.path.relpath(file, root)}\0{size}\n".encode())
        digests[split] = digest.hexdigest()
    return digests


def read_each_epoch(read_epoch, shuffle, seed, epoch):
    """`read_epoch(order_seed)` once per iteration, with the `[2]` int64 seed of its order.

    The seed is `(seed, epoch)` when `epoch` is given, a new draw from
    `seed` at every iteration of the dataset when it is not, and zeros
    (the reader's listing order) without `shuffle`. See `Source.examples`.
    """
    if not shuffle:
        seeds = tf.data.Dataset.from_tensors(tf.zeros([2], tf.int64))
    elif epoch is None:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    else:
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little")
        seeds = tf.data.Dataset.from_tensors(
            tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)]))
    return seeds.take(1).flat_map(read_epoch)
