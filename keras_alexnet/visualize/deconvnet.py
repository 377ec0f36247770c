"""ZFNet's deconvnet: a feature map projected back to pixel space."""

import keras
import numpy as np
from keras import ops

from keras_alexnet.layers import LocalResponseNormalization
from keras_alexnet.visualize._model import (
    check_images, is_relu, layer_path, strongest_channels, vjp,
)

METHODS = ("deconvnet", "guided_backpropagation")
POSITIONS = ("strongest", "all")


def deconvnet(model, images, layer, feature_map=None, position="strongest",
              method="deconvnet"):
    """Projects one feature map of `layer` back to the input pixels.

    Zeiler & Fergus's deconvnet (§2.1): all activations of `layer` but the
    chosen ones are set to zero, and the signal goes back down the network
    layer by layer:

    - max pooling: unpooled with the switches of the forward pass (each
      value goes back to the position that was the maximum of its window);
    - ReLU: rectified (`relu` of the backward signal, whatever the forward
      activation was);
    - convolution and dense layers: the transposed filters (the
      convolution's adjoint: a transposed convolution, per group for
      `GroupedConv2D`), without bias;
    - local response (contrast) normalisation: skipped, as the paper's
      first arXiv version says ("we do not use any contrast normalization
      operations when in this reconstruction path");
    - every other layer (zero padding, flatten, dropout) by its adjoint.

    `method="guided_backpropagation"` (Springenberg et al. 2014,
    https://arxiv.org/abs/1412.6806) is the documented alternative: at a
    ReLU the signal is also zeroed where the forward activation was zero,
    and LRN passes its true gradient. Switches, transposes and adjoints are
    the vector-Jacobian products of each layer's own (linear) operations on
    the current backend, so every layer implementation of this package is
    followed exactly.

    Reference: [Visualizing and Understanding Convolutional Networks](
    https://arxiv.org/abs/1311.2901) (Zeiler & Fergus 2013).

    Args:
        model: a model from `keras_alexnet.AlexNet(...)`.
        images: `(batch, H, W, 3)` preprocessed images.
        layer: the layer whose feature map is projected, e.g. `"conv5"`.
        feature_map: the channel to project, or one per image; by default
            the strongest of each image (`strongest_feature_maps`).
        position: `"strongest"` keeps only the feature map's largest
            activation (the paper's figure 2), `"all"` keeps the whole map.
        method: `"deconvnet"` or `"guided_backpropagation"`.

    Returns:
        float32 array of the images' shape: the projections, signed; show
        them with `scale_to_unit_range(projection, axis=(1, 2, 3))`.

    Examples:
        >>> projections = deconvnet(model, images, "conv5")
        >>> plotting.plot_images(scale_to_unit_range(projections, axis=(1, 2, 3)))
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}. Received: method={method!r}")
    if position not in POSITIONS:
        raise ValueError(
            f"`position` must be one of {POSITIONS}. Received: position={position!r}"
        )
    images = check_images(images)
    path = layer_path(model, layer)
    layer_inputs, outputs = [], ops.convert_to_tensor(images)
    for path_layer in path:
        layer_inputs.append(outputs)
        outputs = path_layer(outputs, training=False)
    layer_outputs = layer_inputs[1:] + [outputs]

    activations = ops.convert_to_numpy(outputs)
    if feature_map is None:
        channels = strongest_channels(activations)
    else:
        channels = np.asarray(feature_map)
        if (not np.issubdtype(channels.dtype, np.integer) or channels.ndim > 1
                or channels.size not in (1, len(images))
                or not ((0 <= channels) & (channels < activations.shape[-1])).all()):
            raise ValueError(
                f"`feature_map` must be None, or a channel of {layer!r} in "
                f"[0, {activations.shape[-1]}), or one per image. "
                f"Received: feature_map={feature_map!r}"
            )
        channels = np.broadcast_to(channels.reshape(-1), (len(images),))
    signal = ops.convert_to_tensor(_kept_activations(activations, channels, position))
    for path_layer, inputs, outputs in reversed(list(zip(path, layer_inputs, layer_outputs))):
        signal = _project(path_layer, inputs, outputs, signal, method)
    return ops.convert_to_numpy(signal).astype("float32")


def _kept_activations(activations, channels, position):
    """Zeros but channel `channels[n]` of image n: all of it, or its maximum."""
    kept = np.zeros_like(activations)
    for index, channel in enumerate(channels):
        values = activations[index, ..., channel]
        if position == "all":
            kept[index, ..., channel] = values
        else:
            strongest = np.unravel_index(values.argmax(), values.shape)
            kept[(index, *strongest, channel)] = values[strongest]
    return kept


def _project(layer, inputs, outputs, signal, method):
    """The deconvnet (or guided backpropagation) step back through one layer."""
    if isinstance(layer, LocalResponseNormalization) and method == "deconvnet":
        return signal
    activation = getattr(layer, "activation", None)
    if is_relu(activation):
        signal = ops.relu(signal)
        if method == "guided_backpropagation":
            signal = signal * ops.cast(ops.greater(outputs, 0), signal.dtype)
    elif activation not in (None, keras.activations.linear):
        raise ValueError(
            "The deconvnet goes back through ReLU and linear layers only; layer "
            f"{layer.name!r} has activation {getattr(activation, '__name__', activation)!r}."
        )
    if isinstance(layer, keras.layers.Conv2D):
        return vjp(lambda x: layer.convolution_op(x, layer.kernel), inputs, signal)
    if isinstance(layer, keras.layers.Dense):
        return ops.matmul(signal, ops.transpose(layer.kernel))
    if isinstance(layer, keras.layers.Activation):
        return signal
    if layer.weights:
        raise ValueError(
            f"The deconvnet cannot go back through layer {layer.name!r} "
            f"({type(layer).__name__}): only convolutions, dense layers and "
            "layers without weights are supported."
        )
    return vjp(lambda x: layer(x, training=False), inputs, signal)
