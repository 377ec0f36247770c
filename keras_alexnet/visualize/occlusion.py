"""ZFNet's occlusion sensitivity: slide a grey square, watch the output change."""

import dataclasses

import keras
import numpy as np

from keras_alexnet._validation import check_positive_int
from keras_alexnet.visualize._model import (
    DEFAULT_BATCH_SIZE, get_layer, image_input, mean_pixel, predict, strongest_channels,
)
from keras_alexnet.visualize.predictions import check_classifier, class_probabilities


@dataclasses.dataclass(frozen=True)
class OcclusionMaps:
    """Occlusion sensitivity of one image (`occlusion_sensitivity`).

    Map entry `[row, column]` belongs to the grey square covering input
    rows `[row * stride, row * stride + size)` and columns
    `[column * stride, column * stride + size)`.

    Attributes:
        class_probability: `(rows, columns)` probability of class `label`.
        feature_activation: `(rows, columns)` total activation (summed over
            positions) of feature map `feature_map` of the chosen layer.
        predicted_class: `(rows, columns)` the most probable class.
        label: the class whose probability is mapped.
        feature_map: the channel of the chosen layer that is mapped.
        unoccluded_probability: probability of `label` without occluder.
        unoccluded_activation: total activation of `feature_map` without occluder.
        size: side of the grey square, in pixels.
        stride: step between neighbouring squares, in pixels.
    """

    class_probability: np.ndarray
    feature_activation: np.ndarray
    predicted_class: np.ndarray
    label: int
    feature_map: int
    unoccluded_probability: float
    unoccluded_activation: float
    size: int
    stride: int


def _total_activation(activations, feature_map):
    """Per image, the sum over positions of one channel (a 2-D layer's unit value)."""
    channel = activations[..., feature_map]
    return channel.reshape(len(channel), -1).sum(axis=1)


def occlusion_sensitivity(model, image, label=None, layer="conv5", size=None, stride=None,
                          fill=None, feature_map=None, batch_size=DEFAULT_BATCH_SIZE):
    """Occlusion sensitivity (Zeiler & Fergus 2013, §4.2 and figure 7).

    Covers the image with a `size` x `size` square of value `fill` at every
    position on a grid of step `stride`, and records for each position the
    probability of the true class, the most probable class, and the total
    activation of one feature map of `layer`: by default the strongest one
    in the unoccluded image (largest activation at any position), as in
    the paper's figure 7(b). A square that covers what the network relies
    on lowers the probability; elsewhere it stays as without occluder.

    Reference: [Visualizing and Understanding Convolutional Networks](
    https://arxiv.org/abs/1311.2901) (Zeiler & Fergus 2013).

    Args:
        model: a classifier from `keras_alexnet.AlexNet(...)`.
        image: one preprocessed image `(H, W, 3)`.
        label: the true class; by default the model's prediction on the
            unoccluded image.
        layer: the layer whose feature map is mapped, e.g. `"conv5"`.
        size: side of the square in pixels; by default a seventh of the
            image's shorter side (32 at 224).
        stride: grid step in pixels; by default a quarter of `size`.
        fill: value of the square (a number, or one per channel); by
            default the mean pixel of what the model takes (`mean_pixel`):
            0 for normalised images, the pixel mean of its weights for a
            model that normalises itself (`include_preprocessing=True`).
        feature_map: the channel of `layer` to map instead of the strongest.
        batch_size: occluded images per forward pass.

    Returns:
        An `OcclusionMaps`.

    Examples:
        >>> maps = occlusion_sensitivity(model, images[0], label=3, size=16, stride=4)
        >>> maps.class_probability.shape     # 67x67 input: (67 - 16) // 4 + 1
        (13, 13)
    """
    check_classifier(model)
    image = np.asarray(image, "float32")
    if image.ndim != 3:
        raise ValueError(
            "`image` must be one image (height, width, channels). "
            f"Received: image with shape {image.shape}"
        )
    height, width = image.shape[:2]
    if size is None:
        size = max(1, round(min(height, width) / 7))
    check_positive_int("size", size)
    if size > min(height, width):
        raise ValueError(
            f"`size` must be at most the image's shorter side, {min(height, width)}. "
            f"Received: size={size}"
        )
    if stride is None:
        stride = max(1, size // 4)
    check_positive_int("stride", stride)
    check_positive_int("batch_size", batch_size)
    both = keras.Model(image_input(model), [model.output, get_layer(model, layer).output])
    outputs, activations = predict(both, image[None])
    probabilities = class_probabilities(model, outputs)[0]
    if label is None:
        label = int(probabilities.argmax())
    elif not isinstance(label, (int, np.integer)) or not 0 <= label < len(probabilities):
        raise ValueError(
            f"`label` must be a class index in [0, {len(probabilities)}). Received: label={label!r}"
        )
    if feature_map is None:
        feature_map = int(strongest_channels(activations)[0])
    elif not 0 <= feature_map < activations.shape[-1]:
        raise ValueError(
            f"`feature_map` must be a channel of {layer!r}, in [0, {activations.shape[-1]}). "
            f"Received: feature_map={feature_map!r}"
        )

    if fill is None:
        fill = mean_pixel(model)
    corners = [(top, left) for top in range(0, height - size + 1, stride)
               for left in range(0, width - size + 1, stride)]
    class_probability, feature_activation, predicted = [], [], []
    for start in range(0, len(corners), batch_size):
        chunk = corners[start:start + batch_size]
        occluded = np.repeat(image[None], len(chunk), axis=0)
        for occluded_image, (top, left) in zip(occluded, chunk):
            occluded_image[top:top + size, left:left + size] = fill
        outputs, chunk_activations = predict(both, occluded)
        chunk_probabilities = class_probabilities(model, outputs)
        class_probability.append(chunk_probabilities[:, label])
        predicted.append(chunk_probabilities.argmax(axis=1))
        feature_activation.append(_total_activation(chunk_activations, feature_map))
    grid = (len(range(0, height - size + 1, stride)), len(range(0, width - size + 1, stride)))
    return OcclusionMaps(
        class_probability=np.concatenate(class_probability).reshape(grid),
        feature_activation=np.concatenate(feature_activation).reshape(grid),
        predicted_class=np.concatenate(predicted).reshape(grid),
        label=label,
        feature_map=feature_map,
        unoccluded_probability=float(probabilities[label]),
        unoccluded_activation=float(_total_activation(activations, feature_map)[0]),
        size=size,
        stride=stride,
    )
