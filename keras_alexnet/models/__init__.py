"""AlexNet model builders."""

from keras_alexnet.models.alexnet import AlexNet

__all__ = ["AlexNet"]
