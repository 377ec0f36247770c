"""keras-alexnet: the AlexNet of Krizhevsky, Sutskever and Hinton (2012) for Keras 3.

The same code runs on the TensorFlow, JAX and PyTorch backends; importing this
package never chooses the backend (`KERAS_BACKEND` does), never imports jax or
torch itself, and loads TensorFlow only for what needs it (`tf.data`
pipelines, SavedModel export), so the model builds and trains on JAX or
PyTorch without it.
"""

from keras_alexnet import layers
from keras_alexnet.imagenet import decode_predictions
from keras_alexnet.models import AlexNet

__version__ = "0.1.0"

__all__ = ["AlexNet", "decode_predictions", "export_saved_model", "layers", "__version__"]


def __getattr__(name):
    if name == "export_saved_model":
        from keras_alexnet.export import export_saved_model

        return export_saved_model
    raise AttributeError(f"module 'keras_alexnet' has no attribute {name!r}")
