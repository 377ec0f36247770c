"""The input statistics a model's weights were trained with, carried by the model.

Caffe's `bvlc_alexnet` takes RGB pixel values in [0, 255] minus Caffe's mean
(no scaling); torchvision's and this package's presets take
`(pixels / 255 - ImageNet mean) / ImageNet std`. A model feeds right only
with its own statistics, so `AlexNet` records them on the model it returns
(an `AlexNetModel`, in its config: they survive `.keras` saving), whether or
not it normalises inside (`include_preprocessing=True`), and the presets,
the export, `predict` and `preprocess_input` read them with
`pixel_statistics`.
"""

import os

import keras
import numpy as np

from keras_alexnet.imagenet import IMAGENET_MEAN, IMAGENET_STD

# RGB, pixel values in [0, 255]: what models trained on the presets' defaults expect.
IMAGENET_PIXEL_MEAN = tuple(255 * value for value in IMAGENET_MEAN)
IMAGENET_PIXEL_STD = tuple(255 * value for value in IMAGENET_STD)


@keras.saving.register_keras_serializable(package="keras_alexnet")
class AlexNetModel(keras.Model):
    """A functional model that records the input statistics of its weights.

    `AlexNet` returns one. It is a plain functional `keras.Model` (same
    constructor, same layers) with two more config entries, so a `.keras`
    file keeps them.

    Args:
        inputs, outputs, name: as for a functional `keras.Model`.
        pixel_mean, pixel_std: per-channel RGB statistics on the [0, 255]
            scale; the model takes `(pixels - pixel_mean) / pixel_std`, or raw
            pixels when it normalises them itself. ImageNet's by default.
    """

    # The argument names must stay Functional's (inputs, outputs, name) for
    # Keras to rebuild the graph from the config and to clone the model.
    def __init__(self, inputs, outputs, name=None, **kwargs):
        pixel_mean = kwargs.pop("pixel_mean", None) or IMAGENET_PIXEL_MEAN
        pixel_std = kwargs.pop("pixel_std", None) or IMAGENET_PIXEL_STD
        super().__init__(inputs, outputs, name=name, **kwargs)
        self.pixel_mean = _check_statistic("pixel_mean", pixel_mean)
        self.pixel_std = _check_statistic("pixel_std", pixel_std, positive=True)

    def get_config(self):
        return {**super().get_config(), "pixel_mean": list(self.pixel_mean),
                "pixel_std": list(self.pixel_std)}


def _check_statistic(name, values, positive=False):
    values = tuple(float(value) for value in values)
    if len(values) != 3 or (positive and min(values) <= 0):
        condition = "3 positive numbers" if positive else "3 numbers"
        raise ValueError(f"`{name}` must be {condition} (RGB). Received: {name}={values!r}")
    return values


def pixel_statistics(model):
    """`(mean, std)`, RGB on the [0, 255] scale, that `model`'s weights expect.

    Read from the model, or from the first `AlexNetModel` nested in it (a
    `keras.Sequential` or functional wrapper); ImageNet's for any other
    model (the presets' defaults).

    Examples:
        >>> model = keras_alexnet.AlexNet(weights="bvlc_alexnet.caffemodel")
        >>> pixel_statistics(model)
        ((122.67891, 116.66877, 104.00699), (1.0, 1.0, 1.0))
    """
    found = _find_alexnet_model(model)
    if found is None:
        return IMAGENET_PIXEL_MEAN, IMAGENET_PIXEL_STD
    return found.pixel_mean, found.pixel_std


def _find_alexnet_model(model):
    if isinstance(model, AlexNetModel):
        return model
    for layer in getattr(model, "layers", ()):
        if isinstance(layer, keras.Model):
            found = _find_alexnet_model(layer)
            if found is not None:
                return found
    return None


def preprocess_input(x, weights=None):
    """Normalises RGB pixel values in [0, 255] as the weights expect, like keras.applications.

    `(x - mean) / std` per channel, with the statistics of `weights`: Caffe's
    `bvlc_alexnet` subtracts its mean and does not scale (the mode of
    `keras.applications.vgg16.preprocess_input`, but in RGB order: the
    converted conv1 takes RGB), torchvision's and this package's own
    training use ImageNet's mean and standard deviation. A model built with
    `include_preprocessing=True` takes the pixels as they are instead.

    Args:
        x: channels-last RGB images or a batch of them, pixel values in
            [0, 255]: a NumPy array (or anything `np.asarray` takes; a float32
            array comes back) or a backend tensor (a tensor comes back).
        weights: whose statistics: `None` (ImageNet's, the presets'
            default), a Keras model (the statistics it carries, see
            `pixel_statistics`), a `PretrainedWeights`, or the path of a
            weights file `AlexNet(weights=...)` reads (read in full: pass
            the model when you have it).

    Returns:
        The normalised images, the type and shape of `x`.

    Examples:
        >>> model = keras_alexnet.AlexNet(weights="bvlc_alexnet.caffemodel")
        >>> probabilities = model.predict(keras_alexnet.preprocess_input(images, weights=model))
        >>> keras_alexnet.decode_predictions(probabilities, top=3)
    """
    mean, std = _statistics_of(weights)
    if keras.ops.is_tensor(x) or keras.backend.is_keras_tensor(x):
        if x.shape[-1] != 3:
            raise ValueError(f"`x` must be channels-last RGB images. Received: shape={x.shape}")
        x = keras.ops.cast(x, "float32")
        return (x - keras.ops.convert_to_tensor(mean, "float32")) / keras.ops.convert_to_tensor(
            std, "float32")
    x = np.asarray(x, dtype="float32")
    if x.ndim < 3 or x.shape[-1] != 3:
        raise ValueError(f"`x` must be channels-last RGB images. Received: shape={x.shape}")
    return (x - np.asarray(mean, "float32")) / np.asarray(std, "float32")


def _statistics_of(weights):
    from keras_alexnet.convert import PretrainedWeights, read_weights

    if isinstance(weights, keras.Model):
        return pixel_statistics(weights)
    if isinstance(weights, (str, os.PathLike)):
        weights = read_weights(weights)
    if weights is not None and not isinstance(weights, PretrainedWeights):
        raise ValueError(
            "`weights` must be None, a Keras model, a PretrainedWeights or a weights file's "
            f"path. Received: weights={weights!r}"
        )
    return statistics_of_weights(weights)


def statistics_of_weights(pretrained):
    """RGB `(mean, std)` in [0, 255] the weights were trained with: the file's
    record (Caffe: its mean, no scaling), else ImageNet's, the presets' (no
    weights, or a `model.save_weights` file, which records none)."""
    if pretrained is not None and pretrained.pixel_mean is not None:
        return tuple(pretrained.pixel_mean), tuple(pretrained.pixel_std)
    return IMAGENET_PIXEL_MEAN, IMAGENET_PIXEL_STD
