"""Image sources: a folder of class sub-folders, any TFDS dataset, a prepared folder, or the default.

Every source (`Source`) gives `tf.data` datasets of `(uint8 RGB image of any
size, int64 label)` per split, the class names and the number of examples
per split. Augmentation, batching and normalisation live in
`keras_alexnet.presets`.

    source = data.image_folder("~/images")
    examples = source.examples("train", shuffle=True, seed=0)

`prepare` writes a source once as the paper's 256x256 squares in sharded
TFRecords; `prepared` reads such a folder back as a `Source`.
"""

import os

from keras_alexnet.data.folder import decode_rgb, image_folder
from keras_alexnet.data.prepared import PreparedFolderError, is_prepared, prepare, prepared
from keras_alexnet.data.source import NoUsableImagesError, Source, Split
from keras_alexnet.data.synthetic import (DEFAULT_DATASET_DIR, SHAPE_CLASSES,
                                          default_dataset, write_synthetic_image_folder)
from keras_alexnet.data.tfds import IMAGENET_MANUAL_FILES, OfflineError, tfds_dataset

__all__ = ["Source", "Split", "NoUsableImagesError", "OfflineError", "PreparedFolderError",
           "image_folder", "tfds_dataset", "default_dataset", "prepare", "prepared",
           "is_prepared", "write_synthetic_image_folder", "decode_rgb", "from_arguments",
           "DEFAULT_DATASET_DIR", "IMAGENET_MANUAL_FILES", "SHAPE_CLASSES"]


def from_arguments(data=None, dataset=None, data_dir=None, manual_dir=None,
                   validation_fraction=0.1):
    """The source a command line asks for: a folder (prepared or not), a TFDS name, or the default."""
    if data and dataset:
        raise ValueError("Give either a folder (--data) or a TFDS name (--dataset), not both.")
    if data and is_prepared(data):
        return prepared(data)
    if data:
        return image_folder(os.fspath(data), validation_fraction=validation_fraction)
    if dataset:
        return tfds_dataset(dataset, data_dir=data_dir, manual_dir=manual_dir,
                            validation_fraction=validation_fraction)
    return default_dataset()
