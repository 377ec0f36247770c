"""Keras layers that AlexNet needs and Keras 3 does not ship."""

from keras_alexnet.layers.grouped_conv2d import GroupedConv2D
from keras_alexnet.layers.local_response_normalization import (
    LocalResponseNormalization,
)

__all__ = ["GroupedConv2D", "LocalResponseNormalization"]
