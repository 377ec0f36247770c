"""Max pooling that keeps channels-last tensors in place on PyTorch."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_alexnet")
class MaxPooling2D(keras.layers.MaxPooling2D):
    """`keras.layers.MaxPooling2D` without layout copies on the torch backend.

    Same arguments, results and gradients as `keras.layers.MaxPooling2D`. On
    the torch backend, for channels-last data and `padding="valid"` (AlexNet's
    overlapping 3x3 stride-2 pooling), it pools the channels-last tensor as it
    lies in memory; Keras' own torch pooling first copies the whole input to
    channels-first. Every other case, and every other backend, is Keras' path.

    Example:

    >>> MaxPooling2D(3, strides=2)(np.zeros((1, 55, 55, 96))).shape
    (1, 27, 27, 96)
    """

    def call(self, inputs):
        if (
            keras.backend.backend() != "torch"
            or self.data_format != "channels_last"
            or self.padding != "valid"
            or inputs.device.type == "meta"  # Keras' symbolic shape inference
        ):
            return super().call(inputs)
        from keras_alexnet.layers import _torch_kernels

        return _torch_kernels.max_pool2d(
            ops.convert_to_tensor(inputs), self.pool_size, self.strides
        )
