"""Import the published AlexNet weights: Caffe's bvlc_alexnet and torchvision's alexnet.

    model = keras_alexnet.AlexNet(weights="bvlc_alexnet.caffemodel")
    model = keras_alexnet.AlexNet(weights="alexnet-owt-7be5be79.pth")

`AlexNet(weights=...)` reads the file with `read_weights`, which picks the
reader by the file's extension: `.caffemodel` (`caffe.py`), `.pth` / `.pt`
(`torchvision.py`, needs PyTorch) or `.weights.h5` (Keras). The variant,
LRN constants, class count and input normalisation follow the file.

`convert_weights` (`python -m keras_alexnet.convert SRC DST.weights.h5`)
converts once to a Keras weights file that records that architecture, so it
loads anywhere, without PyTorch.
"""

import json
import os
import uuid
from pathlib import Path

from keras_alexnet._validation import check_writable_folder
from keras_alexnet.convert._pretrained import PretrainedWeights
from keras_alexnet.convert.caffe import read_caffemodel
from keras_alexnet.convert.torchvision import (
    TORCHVISION_LAYER_NAMES,
    load_torch_state_dict,
    read_state_dict_file,
)

# The root attribute of a converted `.weights.h5` that records its architecture.
METADATA_ATTRIBUTE = "keras_alexnet_architecture"
_ARCHITECTURE_FIELDS = ("source", "variant", "classes", "lrn_constants", "pixel_mean",
                        "pixel_std")

__all__ = [
    "PretrainedWeights",
    "TORCHVISION_LAYER_NAMES",
    "WEIGHTS_SUFFIXES",
    "convert_weights",
    "load_torch_state_dict",
    "read_weights",
]


def _last_dense_width(handle):
    """The output width of the last `Dense` layer in a Keras `.weights.h5`, or `None`.

    Keras stores each layer's variables under `layers/<class name>[_<n>]/vars`
    in the model's layer order, so AlexNet's fc8 is the highest-numbered
    `dense` entry; its second variable is the bias.
    """
    layers = handle.get("layers", {})
    numbers = [0 if name == "dense" else int(name[len("dense_"):]) for name in layers
               if name == "dense" or (name.startswith("dense_") and name[6:].isdigit())]
    if not numbers:
        return None
    last = max(numbers)
    bias = layers["dense" if last == 0 else f"dense_{last}"].get("vars/1")
    return None if bias is None or bias.ndim != 1 else int(bias.shape[0])


def _read_keras_weights(path):
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            recorded = handle.attrs.get(METADATA_ATTRIBUTE)
            classes = _last_dense_width(handle)
    except OSError as error:
        raise ValueError(f"{path} is not a readable Keras weights file: {error}") from None
    if recorded is None:  # saved by `model.save_weights`: the caller gives the architecture
        return PretrainedWeights(path=str(path), source="Keras", classes=classes)
    architecture = json.loads(recorded)
    if architecture.get("pixel_mean") is not None:
        for key in ("pixel_mean", "pixel_std"):
            architecture[key] = tuple(architecture[key])
    return PretrainedWeights(path=str(path), **architecture)


# File name endings and their readers, longest first.
_READERS = {
    ".weights.h5": _read_keras_weights,
    ".caffemodel": read_caffemodel,
    ".pth": read_state_dict_file,
    ".pt": read_state_dict_file,
}
WEIGHTS_SUFFIXES = tuple(_READERS)


def read_weights(path):
    """Reads a weights file, picking the reader by its extension.

    Args:
        path: a `.caffemodel` (Caffe), `.pth` / `.pt` (a PyTorch state dict
            of torchvision's AlexNet) or `.weights.h5` (Keras) file; a
            leading `~` is the home folder.

    Returns:
        A `PretrainedWeights`: the architecture the weights need (unknown
        for a `.weights.h5` saved by `model.save_weights`) and a `load_into`
        method.

    Raises:
        ValueError: the extension is not one of `WEIGHTS_SUFFIXES`, the file
            does not exist, or it cannot be read (see the readers).

    Examples:
        >>> weights = keras_alexnet.convert.read_weights("bvlc_alexnet.caffemodel")
        >>> weights.variant, weights.classes
        ('original', 1000)
    """
    name = (os.path.expanduser(os.fspath(path)) if isinstance(path, (str, os.PathLike))
            else None)
    reader = next((reader for suffix, reader in _READERS.items()
                   if name is not None and name.endswith(suffix)), None)
    if reader is None:
        raise ValueError(
            "`weights` must be None (random initialisation) or the path of a weights "
            f"file ending in one of {WEIGHTS_SUFFIXES}; nothing is downloaded. "
            f"Received: weights={path!r}"
        )
    if not os.path.isfile(name):
        raise ValueError(f"The weights file does not exist. Received: weights={path!r}")
    return reader(name)


def convert_weights(source, destination, overwrite=False):
    """Converts a Caffe or torchvision weights file to a Keras `.weights.h5`.

    The destination records the architecture (variant, class count, LRN
    constants, input normalisation) in its root attribute
    `keras_alexnet_architecture`, so `AlexNet(weights=destination)` builds
    the same model without being told, on any backend and without PyTorch.
    It is written to a temporary file and renamed into place.

    Args:
        source: a `.caffemodel` or `.pth` / `.pt` file.
        destination: the `.weights.h5` file to write, in an existing folder
            (a leading `~` is the home folder, as for `source`). It is checked
            before `source` is read.
        overwrite: replace an existing destination; without it an existing
            file is an error and is left untouched.

    Returns:
        The `PretrainedWeights` read from `source`.

    Raises:
        ValueError: the destination does not end in `.weights.h5`, is a
            folder, or its folder does not exist or is not writable; or
            `source` cannot be read (see `read_weights`).
        FileExistsError: the destination exists and `overwrite` is False.

    Examples:
        >>> keras_alexnet.convert.convert_weights("alexnet-owt-7be5be79.pth",
        ...                                       "alexnet.weights.h5")
        >>> model = keras_alexnet.AlexNet(weights="alexnet.weights.h5")
    """
    import h5py

    from keras_alexnet.models import AlexNet

    destination = Path(os.path.expanduser(os.fspath(destination)))
    if not destination.name.endswith(".weights.h5"):
        raise ValueError(
            "The destination must be a `.weights.h5` file. "
            f"Received: destination={str(destination)!r}"
        )
    if destination.is_dir():
        raise ValueError(
            "The destination is a folder; give the `.weights.h5` file to write in it. "
            f"Received: destination={str(destination)!r}"
        )
    if destination.exists() and not overwrite:
        raise FileExistsError(
            f"{destination} already exists; pass overwrite=True (--overwrite) to replace it."
        )
    # Before the source is read and the model built: both take seconds.
    check_writable_folder(destination.parent, f"destination={str(destination)!r}")
    pretrained = read_weights(source)
    if pretrained.layers is None:
        raise ValueError(
            f"{source} is already a Keras weights file. Received: source={str(source)!r}"
        )
    model = AlexNet(weights=pretrained)
    # Keras wants the `.weights.h5` ending on the staging file too.
    staging = destination.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{destination.name}")
    try:
        model.save_weights(staging)
        architecture = {field: getattr(pretrained, field) for field in _ARCHITECTURE_FIELDS}
        with h5py.File(staging, "a") as handle:
            handle.attrs[METADATA_ATTRIBUTE] = json.dumps(architecture)
        os.replace(staging, destination)
    finally:
        staging.unlink(missing_ok=True)
    return pretrained
