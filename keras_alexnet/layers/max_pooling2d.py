"""Max pooling with faster PyTorch and JAX paths."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_alexnet")
class MaxPooling2D(keras.layers.MaxPooling2D):
    """`keras.layers.MaxPooling2D` with faster paths on torch and JAX.

    Same arguments, results and gradients as `keras.layers.MaxPooling2D`. For
    channels-last data and `padding="valid"` (AlexNet's overlapping 3x3
    stride-2 pooling): on the torch backend it pools the channels-last tensor
    as it lies in memory, where Keras' own torch pooling first copies the
    whole input to channels-first; on JAX on CPU its gradient is one
    comparison per window offset, 3x faster on CPU than XLA's
    select-and-scatter (`keras_alexnet.layers._jax_kernels`). Every other
    case, and TensorFlow, is Keras' path.

    Examples:
        >>> MaxPooling2D(3, strides=2)(np.zeros((1, 55, 55, 96))).shape
        (1, 27, 27, 96)
    """

    def call(self, inputs):
        backend = keras.backend.backend()
        if (
            backend not in ("torch", "jax")
            or self.data_format != "channels_last"
            or self.padding != "valid"
        ):
            return super().call(inputs)
        inputs = ops.convert_to_tensor(inputs)
        if backend == "jax":
            from keras_alexnet.layers import _jax_kernels

            if not _jax_kernels.computes_on_cpu():
                return super().call(inputs)
            return _jax_kernels.max_pool2d(inputs, self.pool_size, self.strides)
        if inputs.device.type == "meta":  # Keras' symbolic shape inference
            return super().call(inputs)
        from keras_alexnet.layers import _torch_kernels

        return _torch_kernels.max_pool2d(inputs, self.pool_size, self.strides)
