"""The paper's model parallelism: AlexNet's layers split on their outputs over a model axis."""

import keras

from keras_alexnet._validation import check_positive_int

PAPER_MODEL_PARALLEL = 2
# Layers whose kernels and biases are split on their outputs (the paper's
# "half of the kernels on each GPU"); the activations that stay split are
# the outputs of these layers and of the layers between them.
CONVOLUTIONS = ("conv1", "conv2", "conv3", "conv4", "conv5")
FULLY_CONNECTED = ("fc6", "fc7", "fc8")
SPLIT_FEATURE_MAPS = ("conv1", "lrn1", "pool1", "conv2", "lrn2", "pool2", "conv3", "conv4",
                      "conv5", "pool5")
SPLIT_UNITS = ("fc6", "drop6", "fc7", "drop7")
# fc6 sees all of pool5's maps, as in the paper: gathered once, at the flatten.
GATHERED = ("flatten",)


def model_parallel_distribution(model_parallel=PAPER_MODEL_PARALLEL, devices=None):
    """The paper's two-GPU layout as a `keras.distribution.ModelParallel`.

    Krizhevsky et al. (§3.2, Figure 2) put half of every layer's kernels on
    each of two GPUs. Here a `DeviceMesh` with axes `("batch", "model")` has
    `model_parallel` devices on the model axis and the rest of `devices`
    (every device of every process by default) on the batch axis, so
    `model_parallel=2` on 8 devices trains 4 data-parallel replicas of the
    two-device model. The layout (`alexnet_layout_map`) splits conv1..conv5
    and fc6..fc8 on their outputs and keeps the feature maps between them
    split; conv2, conv4 and conv5 split in whole groups, so each device
    convolves its own group, as each of the paper's GPUs did.

    Every split width must divide by `model_parallel`: with the paper's
    widths (96, 256, 384, 4096) that is 1, 2, 4, 8, 16 or 32, and fc8's
    `classes` too. A width that does not divide is a ValueError naming the
    layer when the model is built.

    Args:
        model_parallel: devices per model replica (the model axis), >= 1.
        devices: the devices to use; `keras.distribution.list_devices()` by
            default.

    Returns:
        A `keras.distribution.ModelParallel`. Set it
        (`keras.distribution.set_distribution`) before building the model,
        and keep it set for `fit`.

    Examples:
        >>> keras.distribution.set_distribution(model_parallel_distribution(2))
        >>> model = keras_alexnet.AlexNet(classes=10)   # each device holds half of it
    """
    if keras.backend.backend() != "jax":
        raise ValueError(
            "Model parallelism is keras.distribution.ModelParallel, which Keras 3 "
            f"implements for the JAX backend only. Received: backend="
            f"{keras.backend.backend()!r}"
        )
    check_positive_int("model_parallel", model_parallel)
    devices = list(devices or keras.distribution.list_devices())
    if len(devices) % model_parallel:
        raise ValueError(
            f"The model axis of {model_parallel} devices does not divide the "
            f"{len(devices)} devices into whole model replicas. Received: "
            f"model_parallel={model_parallel}, devices={len(devices)}"
        )
    mesh = keras.distribution.DeviceMesh(
        (len(devices) // model_parallel, model_parallel), ("batch", "model"), devices
    )
    return _WidthCheckingModelParallel(layout_map=alexnet_layout_map(mesh),
                                       batch_dim_name="batch")


def alexnet_layout_map(device_mesh, model_axis="model", batch_axis="batch"):
    """A `keras.distribution.LayoutMap` splitting AlexNet over `model_axis`.

    Kernels and biases of conv1..conv5 and fc6..fc8 are split on their
    outputs: a convolution kernel `(kh, kw, in / groups, filters)` as
    `(None, None, None, model)`, so with two devices and two groups each
    device holds one group's filters. The outputs of the convolutions, LRN
    and pooling layers stay split on their channels and those of fc6, fc7
    and their dropouts on their units (`"<layer>/output"` entries); the
    flattened pool5 is whole on every device (fc6 sees all of it). Keys
    match the layer names of `keras_alexnet.AlexNet`, also inside an outer
    model.

    Args:
        device_mesh: a `keras.distribution.DeviceMesh` with both axes.
        model_axis: the mesh axis the layers are split over.
        batch_axis: the mesh axis the batch is split over.
    """
    layout_map = keras.distribution.LayoutMap(device_mesh)

    def add(path, axes):
        layout_map[rf"(.*/)?{path}"] = axes

    for name in CONVOLUTIONS:
        add(f"{name}/kernel", (None, None, None, model_axis))
        add(f"{name}/bias", (model_axis,))
    for name in FULLY_CONNECTED:
        add(f"{name}/kernel", (None, model_axis))
        add(f"{name}/bias", (model_axis,))
    for name in SPLIT_FEATURE_MAPS:
        add(f"{name}/output", (batch_axis, None, None, model_axis))
    for name in SPLIT_UNITS:
        add(f"{name}/output", (batch_axis, model_axis))
    for name in GATHERED:
        add(f"{name}/output", (batch_axis, None))
    return layout_map


class _WidthCheckingModelParallel(keras.distribution.ModelParallel):
    """`ModelParallel` that names the layer whose width does not split evenly
    (JAX would otherwise fail deep inside variable creation)."""

    def get_variable_layout(self, variable):
        layout = super().get_variable_layout(variable)
        mesh = self.device_mesh
        for size, axis in zip(variable.shape, layout.axes):
            if axis is None:
                continue
            devices = mesh.shape[mesh.axis_names.index(axis)]
            if size % devices:
                raise ValueError(
                    f"{variable.path} has {size} outputs, which do not split evenly over "
                    f"the {devices} devices of the {axis!r} axis; choose a model-axis size "
                    f"that divides every layer's width. Received: shape={variable.shape}"
                )
        return layout
