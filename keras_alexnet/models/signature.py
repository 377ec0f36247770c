"""What a model takes (normalised images or pixel values) and what it outputs."""

import keras
import numpy as np


def normalizes_inputs(model):
    """Whether `model` takes raw pixel values and normalises them itself.

    True for `AlexNet(include_preprocessing=True)` and for any model whose
    inputs go straight into a `keras.layers.Normalization` or `Rescaling`
    layer (keras.applications' ConvNeXt and EfficientNet, for example), or
    into a nested model that does (such a model wrapped in a
    `keras.Sequential` or a functional model). The presets, evaluation and
    `export_saved_model` use it so that no image is normalised twice.

    Examples:
        >>> normalizes_inputs(keras_alexnet.AlexNet(include_preprocessing=True))
        True
        >>> wrapped = keras.Sequential(
        ...     [keras.Input((227, 227, 3)), keras_alexnet.AlexNet(include_preprocessing=True)])
        >>> normalizes_inputs(wrapped)
        True
    """
    inputs = {id(tensor) for tensor in model.inputs}
    for layer in model.layers:
        # Every call of the layer, not only its first (`layer.input`): a
        # nested model's first call is the one that built it, on its own
        # inputs, not on the wrapping model's.
        if not any(id(tensor) in inputs for node in layer._inbound_nodes
                   for tensor in node.input_tensors):
            continue
        if isinstance(layer, (keras.layers.Normalization, keras.layers.Rescaling)):
            return True
        if isinstance(layer, keras.Model) and normalizes_inputs(layer):
            return True
    return False


OUTPUTS = ("auto", "probabilities", "logits", "features")


def resolve_outputs(model, outputs="auto"):
    """What `model` outputs: `"probabilities"`, `"logits"` or `"features"`.

    `export_saved_model` and `keras_alexnet.predict` use it to apply a
    softmax exactly once, wherever the model's own softmax sits (the
    activation of fc8, a `keras.layers.Softmax` layer, a wrapped model).

    Args:
        model: a Keras model with one output and a fixed input size.
        outputs: one of `OUTPUTS`. `"auto"` decides by a probe:
            probabilities if the model's outputs on two random batches (one
            at the scale of normalised images, one 50 times larger) are
            non-negative rows summing to 1, else logits if the model has a
            classifier layer named `fc8` (also inside a nested model), else
            features. Any other value is checked and returned.

    Examples:
        >>> resolve_outputs(keras_alexnet.AlexNet(input_shape=(67, 67, 3)))
        'probabilities'
        >>> resolve_outputs(keras_alexnet.AlexNet(input_shape=(67, 67, 3),
        ...                                       classifier_activation=None))
        'logits'
    """
    if outputs not in OUTPUTS:
        raise ValueError(f"`outputs` must be one of {OUTPUTS}. Received: outputs={outputs!r}")
    if len(model.outputs) != 1:
        raise ValueError(f"The model must have one output. Received: {len(model.outputs)}")
    rank = len(model.output_shape)
    if outputs in ("probabilities", "logits") and rank != 2:
        raise ValueError(
            f"outputs={outputs!r} needs (batch, classes) outputs, but the model outputs "
            f"{model.output_shape}: a feature extractor's outputs are outputs='features'."
        )
    if outputs != "auto":
        return outputs
    if rank != 2:
        return "features"
    input_shape = tuple(model.input_shape[1:])
    if None in input_shape:
        raise ValueError(
            "Probing what the model outputs needs a fixed input size. "
            f"Received: input_shape={model.input_shape}"
        )
    # Two probes, one at the scale of normalised images and one far beyond it.
    probes = np.random.default_rng(0).normal(size=(2, *input_shape))
    probes *= np.array([1.0, 50.0]).reshape(2, *[1] * len(input_shape))
    scores = keras.ops.convert_to_numpy(model(probes.astype("float32"), training=False))
    scores = scores.astype("float64")
    if np.all(scores >= 0) and np.allclose(scores.sum(axis=1), 1, atol=1e-3):
        return "probabilities"
    return "logits" if _has_layer(model, "fc8") else "features"


def _has_layer(model, name):
    """Whether `model` or a model nested in it has a layer called `name`."""
    return any(layer.name == name or (hasattr(layer, "layers") and _has_layer(layer, name))
               for layer in model.layers)
