"""Matplotlib figures for `keras_alexnet.visualize`.

Matplotlib is imported inside each function, so importing the package does
not load it. Every image is shown scaled to its own range
(`scale_to_unit_range`), which undoes any normalisation for display.
"""

import numpy as np

from keras_alexnet.visualize.kernels import (
    kernel_color_saturation, kernel_mosaic, scale_to_unit_range,
)


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            "keras_alexnet.visualize.plotting needs matplotlib: "
            "pip install 'keras-alexnet[notebooks]'"
        ) from error
    return plt


def _show(axis, image, title=None):
    axis.imshow(scale_to_unit_range(image), interpolation="nearest")
    axis.set_xticks([])
    axis.set_yticks([])
    if title is not None:
        axis.set_title(title, fontsize="small")


def _class_name(class_names, index):
    return str(class_names[index]) if class_names is not None else str(index)


# Inches per mosaic pixel in `plot_kernels`: an 11x11 kernel is about 2/3 inch.
KERNEL_PIXEL_INCHES = 0.06
# Inches above the mosaic for the title.
TITLE_INCHES = 0.4


def plot_kernels(model, layer="conv1", columns=16):
    """AlexNet's figure 3: `kernel_mosaic`, titled with each group's
    `kernel_color_saturation`.

    The figure is as large as the mosaic at `KERNEL_PIXEL_INCHES` per
    kernel pixel, the mosaic filling its width, so it has no margins to
    crop.

    Examples:
        >>> figure = plot_kernels(model)
        >>> figure.savefig("conv1.png")
    """
    plt = _pyplot()
    mosaic = kernel_mosaic(model, layer, columns=columns)
    saturation = kernel_color_saturation(model, layer)
    height, width = (side * KERNEL_PIXEL_INCHES for side in mosaic.shape[:2])
    figure = plt.figure(figsize=(width, height + TITLE_INCHES))
    axis = figure.add_axes((0, 0, 1, height / (height + TITLE_INCHES)))
    axis.imshow(mosaic, interpolation="nearest")
    axis.axis("off")
    if len(saturation) > 1:
        blocks = f"{len(saturation)} blocks (the next layer's groups)"
        values = ", ".join(f"block {index + 1} {value:.2f}"
                           for index, value in enumerate(saturation))
    else:
        blocks, values = "1 block", f"{saturation[0]:.2f}"
    axis.set_title(f"{layer}: {blocks}; colour saturation (0 grey, 1 pure colour): {values}",
                   fontsize="small")
    return figure


def plot_images(images, titles=None, columns=None):
    """A grid of images (patches, projections), each scaled to its own range.

    Examples:
        >>> figure = plot_images(top_activating_patches(model, batches, "conv5", 3).patches)
    """
    images = np.asarray(images)
    columns = columns or int(np.ceil(np.sqrt(len(images))))
    rows = int(np.ceil(len(images) / columns))
    plt = _pyplot()
    figure, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.6 * rows),
                                squeeze=False)
    for index, axis in enumerate(axes.ravel()):
        if index < len(images):
            _show(axis, images[index], None if titles is None else titles[index])
        else:
            axis.axis("off")
    return figure


def plot_predictions(images, classes, probabilities, class_names=None, neighbors=None):
    """AlexNet's figure 4: each query with its top-k bars and nearest neighbours.

    Args:
        images: `(queries, H, W, 3)` the query images.
        classes, probabilities: `top_predictions`' results.
        class_names: class index -> name.
        neighbors: optional `(queries, k, H, W, 3)`, e.g.
            `images_at(dataset, nearest_neighbors(...)[0])`.

    Examples:
        >>> classes, probabilities = top_predictions(model, queries)
        >>> indices, _ = nearest_neighbors(model, queries, train)
        >>> plot_predictions(queries, classes, probabilities, names, images_at(train, indices))
    """
    plt = _pyplot()
    neighbour_count = 0 if neighbors is None else np.asarray(neighbors).shape[1]
    # Square cells for the images; the bars get one and a half, their class
    # names written on them, so no tick labels push the images apart.
    figure, axes = plt.subplots(
        len(images), 2 + neighbour_count, squeeze=False, layout="constrained",
        figsize=(1.6 * (2.5 + neighbour_count), 1.75 * len(images)),
        gridspec_kw={"width_ratios": [1, 1.5] + [1] * neighbour_count},
    )
    for query, row in enumerate(axes):
        _show(row[0], images[query], "query")
        names = [_class_name(class_names, index) for index in classes[query]]
        positions = np.arange(len(names))
        row[1].barh(positions, probabilities[query], color="tab:blue", alpha=0.6)
        for position, name in zip(positions, names):
            row[1].text(0.02, position, name, va="center", fontsize="small")
        row[1].set_yticks([])
        row[1].invert_yaxis()
        row[1].set_xlim(0, 1)
        row[1].set_xticks([0, 0.5, 1])
        row[1].tick_params(labelsize="x-small")
        row[1].set_title("top predictions", fontsize="small")
        for rank, axis in enumerate(row[2:]):
            _show(axis, neighbors[query][rank], f"neighbour {rank + 1}")
    return figure


def plot_occlusion(image, maps, class_names=None):
    """ZFNet's figure 7: the image, then as functions of the grey square's
    position the total activation of the strongest feature map, the
    probability of the true class and the most probable class.

    Examples:
        >>> plot_occlusion(image, occlusion_sensitivity(model, image, label=3), names)
    """
    plt = _pyplot()
    height, width = np.asarray(image).shape[:2]
    rows, columns = maps.class_probability.shape
    # Each map value is drawn at the centre of its square.
    half = maps.size / 2
    extent = (half - maps.stride / 2, half + (columns - 0.5) * maps.stride,
              half + (rows - 0.5) * maps.stride, half - maps.stride / 2)
    figure, axes = plt.subplots(1, 4, figsize=(14, 3.4))
    _show(axes[0], image, f"true class: {_class_name(class_names, maps.label)}")
    class_colours = plt.get_cmap("tab20")
    panels = [
        (maps.feature_activation, f"feature map {maps.feature_map}: total activation"),
        (maps.class_probability, "p(true class)"),
        (class_colours(maps.predicted_class % 20), "most probable class"),
    ]
    for axis, (values, title) in zip(axes[1:], panels):
        shown = axis.imshow(values, extent=extent, interpolation="nearest")
        axis.set_xlim(0, width)
        axis.set_ylim(height, 0)
        axis.set_title(title, fontsize="small")
        if values.ndim == 2:
            figure.colorbar(shown, ax=axis, fraction=0.046)
    from matplotlib.patches import Patch

    axes[3].legend(
        handles=[Patch(color=class_colours(index % 20), label=_class_name(class_names, index))
                 for index in np.unique(maps.predicted_class)],
        loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small", frameon=False,
    )
    figure.tight_layout()
    return figure
