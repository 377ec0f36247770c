"""Keras layers that AlexNet needs and Keras 3 does not ship, or ships slower."""

from keras_alexnet.layers.grouped_conv2d import GroupedConv2D
from keras_alexnet.layers.local_response_normalization import (
    LocalResponseNormalization,
)
from keras_alexnet.layers.max_pooling2d import MaxPooling2D

__all__ = ["GroupedConv2D", "LocalResponseNormalization", "MaxPooling2D"]
