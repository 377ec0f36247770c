"""A grouped 2-D convolution that picks the fastest implementation per backend."""

import keras
from keras import ops

IMPLEMENTATIONS = ("auto", "native", "split")

# Measured with bench/bench.py (figures in BENCHMARKS.md): on TensorFlow a
# `Conv2D(groups>1)` goes through an XLA-jitted function, 1.7x slower in an
# AlexNet training step on CPU than one convolution per group; XLA:CPU (JAX)
# is 3x faster with separate convolutions (and XLA:GPU 1.07x on an H100); on
# PyTorch one grouped oneDNN convolution on the channels-last tensor as it
# lies is the fastest.
_AUTO_IMPLEMENTATION = {"tensorflow": "split", "jax": "split", "torch": "native"}


@keras.saving.register_keras_serializable(package="keras_alexnet")
class GroupedConv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` that runs the fastest grouped convolution per backend.

    Output group `g` (channels `[g * filters / groups, (g + 1) * filters /
    groups)`) sees only input group `g`, exactly like
    `keras.layers.Conv2D(groups=groups)`: the kernel has the same shape,
    `(kh, kw, in_channels // groups, filters)`, so weights move freely between
    the two layers and `torch.nn.Conv2d(groups=groups)`. AlexNet's conv2,
    conv4 and conv5 are grouped in two: the paper's two GPUs. AlexNet uses
    this layer with `groups=1` for conv1 and conv3 too, for the PyTorch path
    below.

    On the JAX backend on CPU every single-group convolution (each tower of
    `"split"`, the `"auto"` choice there) is a `jax.custom_vjp` whose kernel
    gradient is one im2col matrix product: XLA:CPU's own kernel-gradient
    convolution is several times slower. (On an H100, XLA's own gradients
    are kept, and `"split"` still trained 7% faster than `"native"`.)

    On the torch backend, for channels-last data, `"native"` (the `"auto"`
    choice there) runs one `torch.nn.functional.conv2d` with the bias fused,
    on the channels-last tensor as it lies: Keras' own torch convolution
    first copies every input to channels-first and back. Padding `"same"`
    with strides above 1 keeps Keras' path.

    Args:
        filters, kernel_size, strides, padding, ...: as `keras.layers.Conv2D`.
        groups: number of groups, >= 1; must divide the input channels and
            `filters`.
        implementation: `"native"` calls one grouped convolution
            (`keras.ops.conv`, or the PyTorch path above), `"split"` runs
            one convolution per group and concatenates the results, `"auto"`
            (default) picks the faster of the two for the current backend.
            All give the same values.

    Examples:
        >>> layer = GroupedConv2D(256, 5, padding="same", groups=2)
        >>> layer(np.zeros((1, 27, 27, 96))).shape
        (1, 27, 27, 256)
    """

    def __init__(self, *args, implementation="auto", **kwargs):
        super().__init__(*args, **kwargs)
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"`implementation` must be one of {IMPLEMENTATIONS}. "
                f"Received: implementation={implementation!r}"
            )
        self.implementation = implementation

    def _resolved_implementation(self):
        if self.implementation != "auto":
            return self.implementation
        return _AUTO_IMPLEMENTATION.get(keras.backend.backend(), "native")

    def _uses_torch_channels_last_path(self, inputs):
        return (
            keras.backend.backend() == "torch"
            and self.data_format == "channels_last"
            and self._resolved_implementation() == "native"
            and (self.padding == "valid" or set(self.strides) == {1})
            and inputs.device.type != "meta"  # Keras' symbolic shape inference
        )

    def call(self, inputs):
        if not self._uses_torch_channels_last_path(inputs):
            return super().call(inputs)
        from keras_alexnet.layers import _torch_kernels

        outputs = _torch_kernels.conv2d(
            ops.convert_to_tensor(inputs),
            ops.convert_to_tensor(self.kernel),
            ops.convert_to_tensor(self.bias) if self.use_bias else None,
            self.strides, self.padding, self.dilation_rate, self.groups,
        )
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def convolution_op(self, inputs, kernel):
        layout = self._filter_split_layout()
        if layout is not None:
            return self._per_device_convolution(inputs, kernel, layout)
        return self._grouped_convolution(inputs, kernel, self.groups)

    def _filter_split_layout(self):
        """The kernel's `TensorLayout` when a `keras.distribution` splits this
        layer's filters, and nothing else, over a device-mesh axis whose size
        divides or is a multiple of `groups`; else None."""
        if keras.backend.backend() != "jax" or self.data_format != "channels_last":
            return None
        distribution = keras.distribution.distribution()
        if distribution is None:
            return None
        layout = distribution.get_variable_layout(self.kernel)
        if layout is None:
            return None
        *other_axes, filter_axis = layout.axes
        if filter_axis is None or any(other_axes):
            return None
        mesh = layout.device_mesh
        devices = mesh.shape[mesh.axis_names.index(filter_axis)]
        if self.groups % devices and devices % self.groups:
            return None
        return layout

    def _per_device_convolution(self, inputs, kernel, layout):
        # XLA's partitioner does not split a grouped convolution by groups:
        # for a kernel split on its filters it gathers the whole kernel and
        # input on every device, and it cannot tell that slicing a group out
        # of a channel-split tensor is one device's shard. So each device
        # convolves its own shard inside `jax.shard_map`: with whole groups
        # per device (conv2/4/5 over 2 devices) that needs no communication;
        # otherwise (conv3; groups split over several devices) each device
        # gathers the input channels and convolves its group's.
        from keras_alexnet.layers import _jax_kernels

        mesh = layout.device_mesh
        filter_axis = layout.axes[-1]
        devices = mesh.shape[mesh.axis_names.index(filter_axis)]
        batch_axis = keras.distribution.distribution().batch_dim_name
        batch_devices = (mesh.shape[mesh.axis_names.index(batch_axis)]
                         if batch_axis in mesh.axis_names else 1)
        if batch_devices == 1 or inputs.shape[0] % batch_devices:
            # Not split (e.g. a last, smaller batch): every device takes all of it.
            batch_axis = None
        whole_groups = self.groups % devices == 0
        return _jax_kernels.filter_split_conv2d(
            ops.convert_to_tensor(inputs),
            ops.convert_to_tensor(kernel),
            lambda x, k: self._grouped_convolution(
                x, k, self.groups // devices if whole_groups else 1),
            mesh.backend_mesh,
            batch_axis,
            filter_axis,
            split_inputs=inputs.shape[-1] % devices == 0,
            devices_per_group=None if whole_groups else devices // self.groups,
        )

    def _grouped_convolution(self, inputs, kernel, groups):
        if groups > 1 and self._resolved_implementation() == "native":
            return super().convolution_op(inputs, kernel)
        if groups == 1:
            return self._single_group_convolution(inputs, kernel)
        channel_axis = -1 if self.data_format == "channels_last" else 1
        input_groups = ops.split(inputs, groups, axis=channel_axis)
        kernel_groups = ops.split(kernel, groups, axis=-1)
        towers = [
            self._single_group_convolution(group_inputs, group_kernel)
            for group_inputs, group_kernel in zip(input_groups, kernel_groups)
        ]
        return ops.concatenate(towers, axis=channel_axis)

    def _single_group_convolution(self, inputs, kernel):
        if (
            keras.backend.backend() != "jax"
            or self.data_format != "channels_last"
            or set(self.dilation_rate) != {1}
        ):
            return super().convolution_op(inputs, kernel)
        from keras_alexnet.layers import _jax_kernels

        if not _jax_kernels.computes_on_cpu():
            return super().convolution_op(inputs, kernel)
        return _jax_kernels.conv2d(
            ops.convert_to_tensor(inputs), ops.convert_to_tensor(kernel),
            self.strides, self.padding,
        )

    def get_config(self):
        return {**super().get_config(), "implementation": self.implementation}
