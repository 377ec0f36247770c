"""Weights read from a file, the architecture they need, and their all-or-nothing copy into a model.

Caffe and PyTorch store a convolution kernel as `(out, in / groups, kh, kw)` and
a fully connected one as `(out, in)`, with the first fully connected layer
reading its input flattened as `(channels, height, width)`; Keras stores
`(kh, kw, in / groups, out)` and `(in, out)` and flattens `(height, width,
channels)`. The format readers (`caffe.py`, `torchvision.py`) return the
channels-first arrays as stored (RGB inputs); this module converts them for a
given model and assigns them only once every shape has been checked.
"""

import dataclasses
import math

import keras
import numpy as np

CLASSIFIER_LAYERS = ("fc6", "fc7", "fc8")


def conv_kernel_to_keras(kernel):
    """`(out, in / groups, kh, kw)` -> Keras' `(kh, kw, in / groups, out)`."""
    return np.transpose(kernel, (2, 3, 1, 0))


def dense_kernel_to_keras(kernel, channels_first_input_shape=None):
    """`(out, in)` -> Keras' `(in, out)`.

    For the first dense layer after a flatten, Caffe and PyTorch flatten
    `(C, H, W)` while Keras flattens `(H, W, C)`; pass
    `channels_first_input_shape=(C, H, W)` to reorder the input rows.
    """
    if channels_first_input_shape is not None:
        channels, height, width = channels_first_input_shape
        kernel = kernel.reshape(kernel.shape[0], channels, height, width)
        kernel = kernel.transpose(0, 2, 3, 1).reshape(kernel.shape[0], -1)
    return kernel.T


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
    assignments = []
    for name, (kernel, bias) in weights.items():
        if name not in present:
            if name in CLASSIFIER_LAYERS and not has_top:
                continue
            raise ValueError(
                f"{source}: the model has no layer {name!r} for these weights. "
                f"Received: a model with layers {sorted(present)}"
            )
        layer = model.get_layer(name)
        kernel, bias = np.asarray(kernel), np.asarray(bias)
        model_kernel, model_bias = (tuple(weight.shape) for weight in layer.weights)
        if isinstance(layer, keras.layers.Dense):
            expected = (model_kernel[1], model_kernel[0])  # (out, in)
            _check_shape(source, name, "kernel (out, in)", kernel.shape, expected,
                         _flatten_hint(model, name, kernel, expected))
            flattened = _pool5_channels_first_shape(model) if name == "fc6" else None
            keras_kernel = dense_kernel_to_keras(kernel, flattened)
        else:
            expected = (model_kernel[3], model_kernel[2], model_kernel[0], model_kernel[1])
            _check_shape(source, name, "kernel (out, in / groups, kh, kw)", kernel.shape,
                         expected, _groups_hint(layer, kernel, expected))
            keras_kernel = conv_kernel_to_keras(kernel)
        _check_shape(source, name, "bias", bias.shape, model_bias)
        assignments.append((layer, [np.ascontiguousarray(keras_kernel, "float32"),
                                    np.asarray(bias, "float32")]))
    for layer, values in assignments:
        layer.set_weights(values)


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
