"""AlexNet model builders."""

from keras_alexnet.models.alexnet import AlexNet, normalizes_inputs

__all__ = ["AlexNet", "normalizes_inputs"]
