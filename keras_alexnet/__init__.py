"""keras-alexnet: the AlexNet of Krizhevsky, Sutskever and Hinton (2012) for Keras 3.

The same code runs on the TensorFlow, JAX and PyTorch backends; importing this
package never chooses the backend (`KERAS_BACKEND` does), never imports jax or
torch itself, and loads TensorFlow only for what needs it (`tf.data`
pipelines, SavedModel export), so the model builds and trains on JAX or
PyTorch without it. Submodules (`keras_alexnet.data`, `.presets`,
`.training`, ...) are imported on first access, like numpy's and keras'.
"""

import importlib

from keras_alexnet import layers
from keras_alexnet.models import AlexNet, preprocess_input

__version__ = "0.1.0"

# Imported on first access (PEP 562), so `import keras_alexnet` stays light.
SUBMODULES = ("augment", "convert", "data", "data_service", "distribute", "evaluation", "export",
              "imagenet", "layers", "models", "predict", "presets", "run_folder", "training",
              "visualize")
LAZY_ATTRIBUTES = {"export_saved_model": "export", "decode_predictions": "imagenet"}

__all__ = ["AlexNet", "decode_predictions", "export_saved_model", "preprocess_input",
           "__version__", *SUBMODULES]


def __getattr__(name):
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in LAZY_ATTRIBUTES:
        module = importlib.import_module(f"{__name__}.{LAZY_ATTRIBUTES[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
