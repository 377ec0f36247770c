"""ZFNet's top-9 patches: the image regions that most activate one feature map."""

import dataclasses

import keras
import numpy as np

from keras_alexnet._validation import check_positive_int
from keras_alexnet.visualize._model import (
    DEFAULT_BATCH_SIZE, RunningTopK, feature_model, image_batches, layer_path, mean_pixel,
    predict,
)


@dataclasses.dataclass(frozen=True)
class ReceptiveField:
    """The input pixels one unit of a layer sees (`receptive_field`).

    Unit `(row, column)` sees input rows `[offset[0] + row * stride[0],
    offset[0] + row * stride[0] + size[0])`, columns likewise; the offset is
    negative where layers pad, and the box may reach past the image.

    Attributes:
        size: `(height, width)` of the box in input pixels.
        stride: `(rows, columns)` input pixels between neighbouring units.
        offset: `(row, column)` of the top-left corner of unit (0, 0)'s box.
    """

    size: tuple
    stride: tuple
    offset: tuple

    def box(self, row, column):
        """`(top, left, bottom, right)` of unit `(row, column)`, unclipped."""
        top = self.offset[0] + row * self.stride[0]
        left = self.offset[1] + column * self.stride[1]
        return top, left, top + self.size[0], left + self.size[1]

    def patch(self, image, row, column, fill=0.0):
        """The `size` box of unit `(row, column)` cut from `image` `(H, W, C)`;
        the part outside the image is `fill`."""
        top, left, bottom, right = self.box(row, column)
        patch = np.full(tuple(self.size) + image.shape[2:], fill, image.dtype)
        inside_top, inside_left = max(top, 0), max(left, 0)
        inside_bottom, inside_right = min(bottom, image.shape[0]), min(right, image.shape[1])
        if inside_bottom > inside_top and inside_right > inside_left:
            patch[inside_top - top:inside_bottom - top, inside_left - left:inside_right - left] = (
                image[inside_top:inside_bottom, inside_left:inside_right])
        return patch


def _same_padding_before(input_size, window, stride, layer):
    """Padding before the input of a `"same"` window, as Keras (and
    TensorFlow) place it: half of the total, the odd pixel after."""
    if input_size is None:
        if stride != 1:
            raise ValueError(
                f"Layer {layer.name!r} pads 'same' with stride {stride} on an input of "
                "unknown size: build the model with a fixed input_shape."
            )
        return (window - 1) // 2
    output_size = -(-input_size // stride)
    return max((output_size - 1) * stride + window - input_size, 0) // 2


def _window_geometry(layer):
    """Per spatial axis `(window, stride, padding before)` of one layer of the chain."""
    input_shape, output_shape = layer.input.shape, layer.output.shape
    if len(output_shape) != 4:
        raise ValueError(
            f"Layer {layer.name!r} has no spatial positions (output shape "
            f"{tuple(output_shape)}): a receptive field needs a convolutional layer "
            "such as 'conv5'."
        )
    if isinstance(layer, keras.layers.ZeroPadding2D):
        return [(1, 1, -before) for before, _ in layer.padding]
    if isinstance(layer, keras.layers.Cropping2D):
        return [(1, 1, before) for before, _ in layer.cropping]
    window = getattr(layer, "kernel_size", None) or getattr(layer, "pool_size", None)
    if window is not None:
        dilation = getattr(layer, "dilation_rate", (1, 1))
        geometry = []
        for axis in range(2):
            extent = (window[axis] - 1) * dilation[axis] + 1
            stride = layer.strides[axis]
            before = (0 if layer.padding == "valid" else
                      _same_padding_before(input_shape[1 + axis], extent, stride, layer))
            geometry.append((extent, stride, -before))
        return geometry
    if tuple(input_shape[1:3]) != tuple(output_shape[1:3]):
        raise ValueError(
            f"Cannot follow the receptive field through layer {layer.name!r} "
            f"({type(layer).__name__}), which changes the spatial size."
        )
    return [(1, 1, 0), (1, 1, 0)]


def receptive_field(model, layer):
    """The receptive field of the units of `layer`, from the layers' geometry.

    Walks the layers from the input: each convolution or pooling of window
    `w`, stride `s` and padding `p` before grows the field by `(w - 1)`
    times the current stride, multiplies the stride by `s` and moves the
    offset back by `p` times the current stride; zero padding and cropping
    move the offset; LRN, activations and dropout leave it as it is.

    Args:
        model: a model from `keras_alexnet.AlexNet(...)`.
        layer: a layer with spatial output, e.g. `"conv5"`.

    Returns:
        A `ReceptiveField`.

    Examples:
        >>> receptive_field(keras_alexnet.AlexNet(), "conv5")
        ReceptiveField(size=(163, 163), stride=(16, 16), offset=(-64, -64))
    """
    size, stride, offset = [1, 1], [1, 1], [0, 0]
    for path_layer in layer_path(model, layer):
        for axis, (window, step, shift) in enumerate(_window_geometry(path_layer)):
            size[axis] += (window - 1) * stride[axis]
            offset[axis] += shift * stride[axis]
            stride[axis] *= step
    return ReceptiveField(tuple(size), tuple(stride), tuple(offset))


@dataclasses.dataclass(frozen=True)
class TopPatches:
    """The images that most activate one feature map (`top_activating_patches`).

    Attributes:
        activations: `(count,)` the feature map's largest activation in each
            image, highest first.
        indices: `(count,)` the images' positions in the dataset's order.
        positions: `(count, 2)` `(row, column)` of that activation in the
            layer's output.
        boxes: `(count, 4)` `(top, left, bottom, right)` of its receptive
            field in input pixels, clipped to the image.
        patches: `(count, field height, field width, channels)` the
            receptive fields cut from the images; outside the image, `fill`.
        receptive_field: the layer's `ReceptiveField`.
    """

    activations: np.ndarray
    indices: np.ndarray
    positions: np.ndarray
    boxes: np.ndarray
    patches: np.ndarray
    receptive_field: ReceptiveField


def top_activating_patches(model, dataset, layer, feature_map, count=9, fill=None,
                           batch_size=DEFAULT_BATCH_SIZE):
    """The `count` input patches that most activate one feature map, over a dataset.

    Zeiler & Fergus show, for a feature map, the 9 image patches with its
    strongest activations (figure 2). Each image counts once, with the
    position of its largest activation in that map, so the patches come
    from `count` different images. The dataset is read once, batch by
    batch, keeping only the running best `count` patches. A patch is the
    unit's receptive field (`receptive_field`), computed from the layers'
    geometry.

    Reference: [Visualizing and Understanding Convolutional Networks](
    https://arxiv.org/abs/1311.2901) (Zeiler & Fergus 2013), figure 2.

    Args:
        model: a model from `keras_alexnet.AlexNet(...)`.
        dataset: a `tf.data.Dataset` or iterable of batches (image arrays,
            or tuples such as `(images, labels)`), or a NumPy array of
            preprocessed images.
        layer: a layer with spatial output, e.g. `"conv5"`.
        feature_map: the channel of `layer`.
        count: number of patches, 9 in the paper.
        fill: value of patch pixels outside the image (a number, or one per
            channel); by default the mean pixel of what the model takes
            (`mean_pixel`: 0 for normalised images, the pixel mean of its
            weights for a model that normalises itself).
        batch_size: batch size when `dataset` is a NumPy array.

    Returns:
        A `TopPatches`.

    Examples:
        >>> top = top_activating_patches(model, validation_batches, "conv5", feature_map=17)
        >>> plotting.plot_images(scale_to_unit_range(top.patches, axis=(1, 2, 3)))
    """
    check_positive_int("count", count)
    if fill is None:
        fill = mean_pixel(model)
    field = receptive_field(model, layer)
    features = feature_model(model, [layer])
    channels = features.output_shape[-1]
    if not isinstance(feature_map, (int, np.integer)) or not 0 <= feature_map < channels:
        raise ValueError(
            f"`feature_map` must be a channel of {layer!r}, in [0, {channels}). "
            f"Received: feature_map={feature_map!r}"
        )
    best, seen, image_shape = RunningTopK(count, largest=True), 0, None
    for images in image_batches(dataset, batch_size):
        (activations,) = predict(features, images)
        maps = activations[..., feature_map].reshape(len(images), -1)
        strongest, values = maps.argmax(axis=1), maps.max(axis=1)
        # Only this batch's own best `count` can enter the running best: cut those.
        batch_best = np.lexsort((np.arange(len(images)), -values))[:count]
        rows, columns = np.unravel_index(strongest[batch_best], activations.shape[1:3])
        positions = np.stack([rows, columns], axis=1)
        patches = np.stack([field.patch(images[index], row, column, fill)
                            for index, row, column in zip(batch_best, rows, columns)])
        best.update(values[None, batch_best], seen + batch_best, (positions, patches))
        seen, image_shape = seen + len(images), images.shape[1:3]
    if seen < count:
        raise ValueError(
            f"The dataset has {seen} images, fewer than `count`. Received: count={count}"
        )
    positions, patches = (payload[0] for payload in best.payloads)
    boxes = np.array([field.box(row, column) for row, column in positions])
    boxes = np.clip(boxes, 0, [image_shape[0], image_shape[1]] * 2)
    return TopPatches(
        activations=best.scores[0],
        indices=best.indices[0],
        positions=positions,
        boxes=boxes,
        patches=patches,
        receptive_field=field,
    )
