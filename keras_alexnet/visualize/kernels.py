"""Figure 3 of AlexNet: the first layer's kernels as one RGB image, per GPU.

The paper's two GPUs each held 48 of conv1's 96 kernels. conv1 is not
itself split, but conv2 is grouped in two, so kernels `[0, 48)` feed GPU 1's
half of conv2 and `[48, 96)` GPU 2's: the mosaic draws them as two blocks, and
`kernel_color_saturation` measures the paper's observation that one block is
largely colour-agnostic and the other colour-specific.
"""

import keras
import numpy as np

from keras_alexnet._validation import check_positive_int
from keras_alexnet.visualize._model import get_layer, layer_names


def scale_to_unit_range(array, axis=None):
    """`(array - min) / (max - min)` over `axis` (all axes by default); a
    constant slice becomes 0.5. For showing kernels and projections as images.

    Examples:
        >>> scale_to_unit_range(np.array([-2.0, 0.0, 2.0]))
        array([0. , 0.5, 1. ])
    """
    array = np.asarray(array, "float64")
    low = array.min(axis=axis, keepdims=True)
    span = array.max(axis=axis, keepdims=True) - low
    return np.where(span > 0, (array - low) / np.where(span > 0, span, 1.0), 0.5)


def _rgb_kernels(model, layer):
    """The kernels of an RGB convolution as `(kernels, kh, kw, 3)`."""
    convolution = get_layer(model, layer)
    if not isinstance(convolution, keras.layers.Conv2D):
        raise ValueError(
            f"Layer {layer!r} is a {type(convolution).__name__}, not a convolution. "
            f"Received: layer={layer!r}"
        )
    kernel = keras.ops.convert_to_numpy(convolution.kernel)  # (kh, kw, in, filters)
    if kernel.shape[2] != 3:
        raise ValueError(
            "Only a convolution of the RGB input (3 input channels per kernel) "
            f"shows as colour images; {layer!r} has {kernel.shape[2]}. "
            f"Received: layer={layer!r}"
        )
    return kernel.transpose(3, 0, 1, 2)


def kernel_groups(model, layer="conv1"):
    """The number of blocks `layer`'s kernels fall into.

    The `groups` of the next convolution, which sees each block on its own:
    2 in the original AlexNet (the paper's two GPUs), 1 in the
    one-weird-trick variant.

    Args:
        model: a model from `keras_alexnet.AlexNet(...)`.
        layer: a convolution, `"conv1"`.

    Examples:
        >>> kernel_groups(keras_alexnet.AlexNet())
        2
    """
    names = layer_names(model)
    get_layer(model, layer)
    for name in names[names.index(layer) + 1:]:
        following = model.get_layer(name)
        if isinstance(following, keras.layers.Conv2D):
            return following.groups
    return 1


def kernel_mosaic(model, layer="conv1", columns=16, spacing=1, group_spacing=4,
                  background=1.0):
    """Figure 3 of AlexNet: the kernels of `layer` tiled into one RGB image.

    Each kernel is scaled to its own range (`scale_to_unit_range`). The
    kernels are split into `kernel_groups(model, layer)` blocks stacked
    vertically (for the original AlexNet, kernels 0-47 above: GPU 1, and
    48-95 below: GPU 2), each block in rows of `columns` kernels. Kernel `j`
    of block `b` has its top-left corner at row
    `b * (block_height + group_spacing) + (j // columns) * (kh + spacing)` and
    column `(j % columns) * (kw + spacing)`.

    Reference: [ImageNet Classification with Deep Convolutional Neural Networks](
    https://papers.nips.cc/paper/4824-imagenet-classification-with-deep-convolutional-neural-networks),
    figure 3.

    Args:
        model: a model from `keras_alexnet.AlexNet(...)`.
        layer: a convolution of the RGB input, `"conv1"`.
        columns: kernels per row.
        spacing: pixels between kernels.
        group_spacing: pixels between the blocks of the two groups.
        background: value of the pixels between kernels, in [0, 1].

    Returns:
        float array `(height, width, 3)` with values in [0, 1].

    Examples:
        >>> mosaic = kernel_mosaic(keras_alexnet.AlexNet())
        >>> mosaic.shape  # two blocks of 3 rows of 16 kernels of 11x11
        (74, 191, 3)
    """
    check_positive_int("columns", columns)
    for name, value in (("spacing", spacing), ("group_spacing", group_spacing)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"`{name}` must be an integer >= 0. Received: {name}={value!r}")
    kernels = scale_to_unit_range(_rgb_kernels(model, layer), axis=(1, 2, 3))
    count, height, width, _ = kernels.shape
    groups = kernel_groups(model, layer)
    per_group = count // groups
    rows, shown_columns = -(-per_group // columns), min(columns, per_group)
    block_height = rows * (height + spacing) - spacing
    mosaic = np.full((groups * (block_height + group_spacing) - group_spacing,
                      shown_columns * (width + spacing) - spacing, 3), background, "float64")
    for index, kernel in enumerate(kernels):
        group, position = divmod(index, per_group)
        row, column = divmod(position, columns)
        top = group * (block_height + group_spacing) + row * (height + spacing)
        left = column * (width + spacing)
        mosaic[top:top + height, left:left + width] = kernel
    return mosaic


def kernel_color_saturation(model, layer="conv1"):
    """How colour-specific each group's kernels are (AlexNet §6, figure 3).

    The paper saw GPU 1's kernels "largely color-agnostic" and GPU 2's
    "largely color-specific". This measures it per kernel as the fraction
    of the kernel's energy off the grey axis: with `grey` the mean of its
    three colour channels at each pixel,
    `sum((kernel - grey)**2) / sum(kernel**2)`, i.e. the energy-weighted mean
    of sin² of the angle between its RGB vectors and (1, 1, 1). It is 0 for
    a grey kernel (the same pattern in R, G and B), 1 for a purely
    chromatic one (e.g. red minus green), about 2/3 for random weights. The
    figure is the mean over each group's kernels; it reports, not asserts,
    the paper's observation: random or early weights show none.

    Args:
        model: a model from `keras_alexnet.AlexNet(...)`.
        layer: a convolution of the RGB input, `"conv1"`.

    Returns:
        float array `(groups,)` (see `kernel_groups`): the mean saturation of
        each group's kernels, in [0, 1].

    Examples:
        >>> kernel_color_saturation(model)   # (2,): GPU 1's kernels, GPU 2's
    """
    kernels = _rgb_kernels(model, layer).astype("float64")
    chromatic = kernels - kernels.mean(axis=-1, keepdims=True)
    energy = (kernels**2).sum(axis=(1, 2, 3))
    saturation = np.divide((chromatic**2).sum(axis=(1, 2, 3)), energy,
                           out=np.zeros_like(energy), where=energy > 0)
    return saturation.reshape(kernel_groups(model, layer), -1).mean(axis=1)
