"""`Source`: a labelled image dataset, read split by split."""

import dataclasses
from typing import Callable


class NoUsableImagesError(ValueError):
    """A source holds no image that can be decoded."""


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of a source: its size and how to read it.

    Attributes:
        count: number of examples (from the listing or the dataset's
            metadata; `None` where unknown).
        read: `read(shuffle, seed, epoch, skipped_log) -> tf.data.Dataset`
            of decoded `(uint8 image (H, W, 3), int64 label)` (see
            `Source.examples`).
    """

    count: int | None
    read: Callable


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
            not valid UTF-8, say). Files that turn out not to decode are
            skipped later, as the pipeline meets them (see `examples`).
        name: a short description (folder path or TFDS name).
    """

    splits: dict
    class_names: list
    skipped: list = dataclasses.field(default_factory=list)
    name: str = ""

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
        if split not in self.splits:
            raise ValueError(f"{self.name} has no {split!r} split; it has {list(self.splits)}.")
        return self.splits[split].read(shuffle, seed, epoch, skipped_log)

    @property
    def train(self):
        """The training examples in listing order (see `examples` to shuffle them)."""
        return self.examples("train")

    @property
    def validation(self):
        """The validation examples in order, or `None` if the source has none."""
        return self.examples("validation") if "validation" in self.splits else None
