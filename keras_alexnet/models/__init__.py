"""AlexNet model builders, and what a model takes and gives.

`alexnet.py` builds the graph of every variant that `architecture.py`
specifies, from arguments `arguments.py` checks; `pixel_statistics.py` is
the input statistics a model carries, `signature.py` what it takes and
outputs.
"""

from keras_alexnet.models.alexnet import AlexNet
from keras_alexnet.models.pixel_statistics import AlexNetModel, pixel_statistics, preprocess_input
from keras_alexnet.models.signature import normalizes_inputs, resolve_outputs

__all__ = ["AlexNet", "AlexNetModel", "normalizes_inputs", "pixel_statistics",
           "preprocess_input", "resolve_outputs"]
