"""AlexNet model builders."""

from keras_alexnet.models.alexnet import AlexNet, normalizes_inputs, resolve_outputs

__all__ = ["AlexNet", "normalizes_inputs", "resolve_outputs"]
