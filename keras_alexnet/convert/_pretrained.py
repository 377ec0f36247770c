"""Weights read from a file, the architecture they need, and their all-or-nothing copy into a model.

Caffe and PyTorch store a convolution kernel as `(out, in / groups, kh, kw)` and
a fully connected one as `(out, in)`, with the first fully connected layer
reading its input flattened as `(channels, height, width)`; Keras stores
`(kh, kw, in / groups, out)` and `(in, out)` and flattens `(height, width,
channels)`. The format readers (`caffe.py`, `torchvision.py`) return the
channels-first arrays as stored (RGB inputs); this module converts them for a
given model and assigns them only once every shape has been checked, one layer
at a time, so a 233 MB file is held once plus one converted layer.
"""

import dataclasses
import math

import keras
import numpy as np

CLASSIFIER_LAYERS = ("fc6", "fc7", "fc8")


def conv_kernel_to_keras(kernel):
    """`(out, in / groups, kh, kw)` -> Keras' `(kh, kw, in / groups, out)`, one float32 copy."""
    return np.ascontiguousarray(np.transpose(kernel, (2, 3, 1, 0)), "float32")


def dense_kernel_to_keras(kernel, channels_first_input_shape=None):
    """`(out, in)` -> Keras' `(in, out)`, one float32 copy.

    For the first dense layer after a flatten, Caffe and PyTorch flatten
    `(C, H, W)` while Keras flattens `(H, W, C)`; pass
    `channels_first_input_shape=(C, H, W)` to reorder the input rows.
    Reordering and transposing are one transpose, so fc6 (151 MB) is copied
    once.
    """
    out = kernel.shape[0]
    if channels_first_input_shape is None:
        return np.ascontiguousarray(kernel.T, "float32")
    transposed = kernel.reshape(out, *channels_first_input_shape).transpose(2, 3, 1, 0)
    return np.ascontiguousarray(transposed, "float32").reshape(-1, out)


@dataclasses.dataclass(frozen=True)
class PretrainedWeights:
    """A weights file and the architecture it needs.

    Attributes:
        path: the file.
        source: who wrote it, for messages (`"Caffe"`, `"torchvision"`,
            `"keras-alexnet"`).
        variant: the `AlexNet` variant the weights belong to; `None` when the
            file does not say (a `.weights.h5` saved by `model.save_weights`).
        classes: fc8's width, or `None` when unknown.
        lrn_constants: `{"size", "alpha", "beta", "k"}` of the paper's formula
            (see `keras_alexnet.layers.LocalResponseNormalization`); `None`
            for a variant without LRN or when unknown.
        pixel_mean, pixel_std: RGB, pixel values in [0, 255]: the input
            normalisation the weights were trained with; `None` when unknown.
        layers: `{layer name: (kernel, bias)}`, channels-first as stored,
            conv1 taking RGB; `None` for a Keras weights file, which
            `model.load_weights` reads.
    """

    path: str
    source: str
    variant: str = None
    classes: int = None
    lrn_constants: dict = None
    pixel_mean: tuple = None
    pixel_std: tuple = None
    layers: dict = None

    def load_into(self, model):
        """Copies the weights into `model`; on any mismatch raises and changes nothing."""
        if self.layers is None:
            model.load_weights(self.path)
        else:
            set_channels_first_weights(model, self.layers, self.path)


def set_channels_first_weights(model, weights, source):
    """Copies channels-first `{layer name: (kernel, bias)}` into `model`, all or nothing.

    Every shape is checked before anything is assigned, so a mismatch leaves
    the model as it was. fc6-fc8 are skipped when the model has none of them
    (`include_top=False`).

    Raises:
        ValueError: a layer is missing or a shape differs; the message names
            `source`, the layer and both shapes.
    """
    present = {layer.name for layer in model.layers}
    has_top = any(name in present for name in CLASSIFIER_LAYERS)
    checked = []
    for name, (kernel, bias) in weights.items():
        if name not in present:
            if name in CLASSIFIER_LAYERS and not has_top:
                continue
            raise ValueError(
                f"{source}: the model has no layer {name!r} for these weights. "
                f"Received: a model with layers {sorted(present)}"
            )
        layer = model.get_layer(name)
        kernel, bias = np.asarray(kernel), np.asarray(bias)  # views, not copies
        model_kernel, model_bias = (tuple(weight.shape) for weight in layer.weights)
        if isinstance(layer, keras.layers.Dense):
            expected = (model_kernel[1], model_kernel[0])  # (out, in)
            _check_shape(source, name, "kernel (out, in)", kernel.shape, expected,
                         _flatten_hint(model, name, kernel, expected))
        else:
            expected = (model_kernel[3], model_kernel[2], model_kernel[0], model_kernel[1])
            _check_shape(source, name, "kernel (out, in / groups, kh, kw)", kernel.shape,
                         expected, _groups_hint(layer, kernel, expected))
        _check_shape(source, name, "bias", bias.shape, model_bias)
        checked.append((layer, kernel, bias))
    # Converted one layer at a time, once every shape is known to fit: the
    # conversions are copies, and the published file is 233 MB.
    for layer, kernel, bias in checked:
        if isinstance(layer, keras.layers.Dense):
            flattened = _pool5_channels_first_shape(model) if layer.name == "fc6" else None
            keras_kernel = dense_kernel_to_keras(kernel, flattened)
        else:
            keras_kernel = conv_kernel_to_keras(kernel)
        layer.set_weights([keras_kernel, np.asarray(bias, "float32")])
        del keras_kernel  # before the next layer's copy


def _check_shape(source, layer_name, what, shape, expected, hint=""):
    if tuple(shape) != tuple(expected):
        raise ValueError(
            f"{source}: the {what} of layer {layer_name!r} has shape {tuple(shape)}, "
            f"the model's needs {tuple(expected)}.{hint}"
        )


def _pool5_channels_first_shape(model):
    height, width, channels = model.get_layer("pool5").output.shape[1:]
    return channels, height, width


def _flatten_hint(model, name, kernel, expected):
    if name != "fc6" or kernel.ndim != 2 or kernel.shape[1] == expected[1]:
        return ""
    channels, height, width = _pool5_channels_first_shape(model)
    side = math.isqrt(kernel.shape[1] // channels)
    return (
        f" fc6 reads pool5 flattened: the weights expect {side}x{side}x{channels}, this "
        f"model's pool5 is {height}x{width}x{channels}. Build it with the input size the "
        "weights were trained at (the default input_shape), or with include_top=False."
    )


def _groups_hint(layer, kernel, expected):
    in_channels = expected[1] * layer.groups
    if kernel.ndim != 4 or kernel.shape[1] in (0, expected[1]) or in_channels % kernel.shape[1]:
        return ""
    return (
        f" The weights split {in_channels} input channels into "
        f"{in_channels // kernel.shape[1]} groups, the model into {layer.groups}."
    )
