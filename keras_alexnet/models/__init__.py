"""AlexNet model builders, and the input statistics a model carries."""

from keras_alexnet.models.alexnet import AlexNet, normalizes_inputs, resolve_outputs
from keras_alexnet.models.pixel_statistics import AlexNetModel, pixel_statistics, preprocess_input

__all__ = ["AlexNet", "AlexNetModel", "normalizes_inputs", "pixel_statistics",
           "preprocess_input", "resolve_outputs"]
