"""Read torchvision's `alexnet-owt-7be5be79.pth` (or any PyTorch AlexNet state dict).

torchvision's `alexnet` is the "one weird trick" layout (Krizhevsky 2014,
https://arxiv.org/abs/1404.5997): `AlexNet(variant="one_weird_trick")`. Its
state dict has the keys `features.{0,3,6,8,10}` and `classifier.{1,4,6}`
(`.weight`, `.bias`), and it was trained on RGB pixels in [0, 1] normalised
with ImageNet's mean and standard deviation.
"""

import warnings

import numpy as np

from keras_alexnet.convert._pretrained import PretrainedWeights, set_channels_first_weights
from keras_alexnet.imagenet import IMAGENET_MEAN, IMAGENET_STD

# torchvision.models.alexnet's state-dict prefixes, one per weighted layer.
TORCHVISION_LAYER_NAMES = {
    "features.0": "conv1",
    "features.3": "conv2",
    "features.6": "conv3",
    "features.8": "conv4",
    "features.10": "conv5",
    "classifier.1": "fc6",
    "classifier.4": "fc7",
    "classifier.6": "fc8",
}


def read_state_dict_file(path):
    """Reads a torchvision AlexNet state dict saved with `torch.save`.

    The file is read with `torch.load(weights_only=True)`, which loads tensors
    and containers but runs no code from the file.

    Args:
        path: a `.pth` / `.pt` file holding `torchvision.models.alexnet()`'s
            `state_dict()`, e.g. `alexnet-owt-7be5be79.pth`.

    Returns:
        A `PretrainedWeights`: variant `"one_weird_trick"`, the class count of
        the last layer, ImageNet's normalisation, and the weights, float32
        (a file saved in float16 or bfloat16 is converted, with a warning).

    Raises:
        ImportError: PyTorch is not installed (the message says how to
            install it, or how to convert the file elsewhere once).
        ValueError: the file is not a readable state dict, or a tensor is
            missing.

    Examples:
        >>> weights = keras_alexnet.convert.torchvision.read_state_dict_file(
        ...     "alexnet-owt-7be5be79.pth")
        >>> weights.variant, weights.classes
        ('one_weird_trick', 1000)
    """
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            f"Reading {path} needs PyTorch, which is not installed. Install the CPU "
            "build with `pip install torch --index-url https://download.pytorch.org/whl/cpu`"
            ", or convert the file once where PyTorch is installed: `python -m "
            "keras_alexnet.convert alexnet-owt-7be5be79.pth alexnet.weights.h5`, then "
            "load alexnet.weights.h5 anywhere."
        ) from error
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for unreadable files
        raise ValueError(
            f"{path} is not a readable PyTorch state dict (save one with "
            f"`torch.save(model.state_dict(), path)`): {type(error).__name__}: {error}"
        ) from None
    if not isinstance(state_dict, dict):
        raise ValueError(
            f"{path} must hold a state dict (a mapping of names to tensors). "
            f"Received: a {type(state_dict).__name__}"
        )
    layers = _layers_from_state_dict(state_dict, TORCHVISION_LAYER_NAMES, str(path))
    return PretrainedWeights(
        path=str(path), source="torchvision", variant="one_weird_trick",
        classes=int(layers["fc8"][1].shape[0]), lrn_constants=None,
        pixel_mean=tuple(255 * mean for mean in IMAGENET_MEAN),
        pixel_std=tuple(255 * std for std in IMAGENET_STD), layers=layers,
    )


def load_torch_state_dict(model, state_dict, layer_names=None):
    """Copies a PyTorch AlexNet state dict into a `keras_alexnet.AlexNet`.

    Every tensor is checked before any weight is assigned: on a mismatch the
    model is left as it was.

    Args:
        model: a model from `keras_alexnet.AlexNet()` whose architecture
            matches the state dict (`variant="one_weird_trick"` for
            torchvision's `alexnet`). With `include_top=False` only the
            convolutions are copied.
        state_dict: mapping of `"<prefix>.weight"` / `"<prefix>.bias"` to
            tensors or arrays.
        layer_names: mapping of state-dict prefix to Keras layer name;
            defaults to torchvision's (`TORCHVISION_LAYER_NAMES`).

    Raises:
        ValueError: a layer or tensor is missing or has the wrong shape.

    Examples:
        >>> model = keras_alexnet.AlexNet(variant="one_weird_trick")
        >>> load_torch_state_dict(model, torchvision.models.alexnet().state_dict())
    """
    layers = _layers_from_state_dict(state_dict, layer_names or TORCHVISION_LAYER_NAMES,
                                     "The state dict")
    set_channels_first_weights(model, layers, "The state dict")


def _layers_from_state_dict(state_dict, layer_names, source):
    layers, converted = {}, set()
    for prefix, layer_name in layer_names.items():
        keys = (f"{prefix}.weight", f"{prefix}.bias")
        missing = [key for key in keys if key not in state_dict]
        if missing:
            raise ValueError(
                f"{source} has no {missing} for layer {layer_name!r}. "
                f"Received: keys {sorted(state_dict)[:20]}"
            )
        layers[layer_name] = tuple(_to_numpy(state_dict[key], converted) for key in keys)
    if converted:
        warnings.warn(
            f"{source} holds {' and '.join(sorted(converted))} tensors; they were converted "
            "to float32, the model's weights' dtype.", stacklevel=3)
    return layers


def _to_numpy(value, converted):
    """A tensor or array as NumPy; a torch float tensor as float32, its dtype's name
    added to `converted` if it was another (NumPy has no bfloat16)."""
    if hasattr(value, "detach"):  # a torch tensor; torch is not imported here
        value = value.detach().cpu()
        dtype = str(value.dtype).removeprefix("torch.")
        if value.is_floating_point() and dtype != "float32":
            converted.add(dtype)
            value = value.float()
        value = value.numpy()
    return np.asarray(value)
