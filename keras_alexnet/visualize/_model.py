"""Model introspection shared by the visualisations.

Layers by name (an unknown name lists the ones that exist), the chain of
layers from the input to one of them, batched feature extraction over
datasets of any size, a running top-k over a stream, and vector-Jacobian
products computed natively on each backend.
"""

import keras
import numpy as np
from keras import ops

DEFAULT_BATCH_SIZE = 64


def layer_names(model):
    """The names of the model's layers, input layers left out."""
    return [layer.name for layer in model.layers
            if not isinstance(layer, keras.layers.InputLayer)]


def get_layer(model, name):
    """`model.get_layer(name)`, with an error that lists the layers that exist."""
    names = layer_names(model)
    if name not in names:
        raise ValueError(
            f"Model {model.name!r} has no layer named {name!r}. Its layers are: "
            f"{', '.join(names)}. Received: layer={name!r}"
        )
    return model.get_layer(name)


def image_input(model):
    """The model's one input: every visualisation feeds it images."""
    if len(model.inputs) != 1:
        raise ValueError(
            "The visualisations need a model with one image input. "
            f"Received: a model with {len(model.inputs)} inputs"
        )
    return model.inputs[0]


def layer_path(model, name):
    """The layers from the model's input up to and including layer `name`.

    The visualisations walk the network one layer at a time (the deconvnet
    backwards, the receptive field forwards), so the layers must form one
    chain, as AlexNet's do.
    """
    target = get_layer(model, name)
    layers = [layer for layer in model.layers
              if not isinstance(layer, keras.layers.InputLayer)]
    path = layers[:layers.index(target) + 1]
    previous_output = image_input(model)
    for layer in path:
        if layer.input is not previous_output:
            raise ValueError(
                "The visualisations follow models whose layers form one chain, "
                f"as AlexNet's do; the input of layer {layer.name!r} is not the "
                "output of the layer before it."
            )
        previous_output = layer.output
    return path


def mean_pixel(model):
    """The mean pixel of what `model` takes, per RGB channel: the pixel mean of
    its weights for a model that normalises its inputs itself, else 0 (the
    mean of normalised images). The neutral value to occlude or pad with."""
    from keras_alexnet.models import normalizes_inputs, pixel_statistics

    if normalizes_inputs(model):
        return np.asarray(pixel_statistics(model)[0], "float32")
    return np.zeros(3, "float32")


def feature_model(model, names):
    """A model from the same input to the outputs of the layers `names`."""
    outputs = [get_layer(model, name).output for name in names]
    return keras.Model(image_input(model), outputs)


def predict(model, images):
    """The model's outputs on one batch, in inference mode, as a list of arrays."""
    outputs = model.predict_on_batch(np.asarray(images, "float32"))
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def check_images(images, name="images"):
    """`images` as a float32 array `(batch, height, width, channels)`."""
    images = np.asarray(images, "float32")
    if images.ndim != 4:
        raise ValueError(
            f"`{name}` must be a batch of images (batch, height, width, channels). "
            f"Received: {name} with shape {images.shape}"
        )
    return images


def labelled_batches(dataset, batch_size=DEFAULT_BATCH_SIZE):
    """`(images, labels or None)` NumPy batches from a dataset.

    `dataset` is a `tf.data.Dataset` or any iterable of batches: image
    arrays `(batch, H, W, C)` or tuples whose first item is one (e.g.
    `(images, labels)`), or a single NumPy array of images, cut into
    batches of `batch_size`. Only one batch is in memory at a time.
    """
    if isinstance(dataset, np.ndarray):
        images = check_images(dataset, "dataset")
        for start in range(0, len(images), batch_size):
            yield images[start:start + batch_size], None
        return
    for element in dataset:
        if isinstance(element, (tuple, list)):
            images = element[0]
            labels = np.asarray(element[1]).reshape(-1) if len(element) > 1 else None
        else:
            images, labels = element, None
        yield check_images(images, "dataset element"), labels


def image_batches(dataset, batch_size=DEFAULT_BATCH_SIZE):
    """The image arrays of `labelled_batches(dataset)`."""
    for images, _ in labelled_batches(dataset, batch_size):
        yield images


def images_at(dataset, indices, batch_size=DEFAULT_BATCH_SIZE):
    """The images at positions `indices` of a dataset, in one streaming pass.

    Positions count images in iteration order across batches (the indices
    that `nearest_neighbors` and `top_activating_patches` return), so the
    dataset must yield its images in the same order every time it is
    iterated (no shuffling). Only the requested images are kept.

    Args:
        dataset: a `tf.data.Dataset` or iterable of batches (images, or
            tuples whose first item is the images), or a NumPy array of
            images.
        indices: integer array of any shape.
        batch_size: batch size when `dataset` is a NumPy array.

    Returns:
        Array of shape `indices.shape + image shape`.

    Examples:
        >>> indices, distances = nearest_neighbors(model, queries, train_batches)
        >>> neighbours = images_at(train_batches, indices)   # (queries, k, H, W, 3)
    """
    indices = np.asarray(indices)
    if indices.size == 0 or not np.issubdtype(indices.dtype, np.integer) or (indices < 0).any():
        raise ValueError(
            "`indices` must be a non-empty array of non-negative integers. "
            f"Received: indices={indices!r}"
        )
    wanted, found, seen = set(indices.ravel().tolist()), {}, 0
    for images in image_batches(dataset, batch_size):
        for position in wanted.intersection(range(seen, seen + len(images))):
            found[position] = images[position - seen]
        seen += len(images)
        if len(found) == len(wanted):
            break
    missing = sorted(wanted - found.keys())
    if missing:
        raise ValueError(
            f"The dataset has only {seen} images. Received indices out of range: "
            f"{missing[:10]}"
        )
    return np.stack([found[index] for index in indices.ravel().tolist()]).reshape(
        indices.shape + next(iter(found.values())).shape
    )


class RunningTopK:
    """The `k` best scores of each row seen so far over a stream of batches.

    Ties go to the smaller index. `payloads` (optional) carry arrays with
    one entry per item (e.g. an image patch) along with the scores.
    """

    def __init__(self, k, largest):
        self.k = k
        self._sign = -1.0 if largest else 1.0
        self.scores = self.indices = None
        self.payloads = ()

    def update(self, scores, indices, payloads=()):
        """Merges `scores` `(rows, n)` of items `indices` `(n,)`, each payload
        an array `(n, ...)` shared by all rows."""
        scores = np.asarray(scores, "float64")
        indices = np.broadcast_to(np.asarray(indices, "int64"), scores.shape)
        payloads = [np.broadcast_to(payload[None], (len(scores),) + payload.shape)
                    for payload in payloads]
        if self.scores is not None:
            scores = np.concatenate([self.scores, scores], axis=1)
            indices = np.concatenate([self.indices, indices], axis=1)
            payloads = [np.concatenate([kept, new], axis=1)
                        for kept, new in zip(self.payloads, payloads)]
        order = np.lexsort((indices, self._sign * scores), axis=-1)[:, :self.k]
        self.scores = np.take_along_axis(scores, order, axis=1)
        self.indices = np.take_along_axis(indices, order, axis=1)
        self.payloads = tuple(
            np.take_along_axis(payload, order.reshape(order.shape + (1,) * (payload.ndim - 2)),
                               axis=1)
            for payload in payloads
        )


def strongest_feature_maps(model, images, layer):
    """Per image, the feature map (channel) of `layer` with the largest activation.

    ZFNet (Zeiler & Fergus 2013, https://arxiv.org/abs/1311.2901) projects
    and occludes "the strongest feature map": the channel whose largest
    activation over all positions is the highest.

    Args:
        model: a model from `keras_alexnet.AlexNet(...)`.
        images: `(batch, H, W, 3)` preprocessed images.
        layer: a layer name, e.g. `"conv5"`.

    Returns:
        int array `(batch,)`.

    Examples:
        >>> channels = strongest_feature_maps(model, images, "conv5")   # one per image
    """
    (activations,) = predict(feature_model(model, [layer]), check_images(images))
    return strongest_channels(activations)


def strongest_channels(activations):
    """Per image, the channel of `activations` `(batch, ..., channels)` with
    the largest value at any position."""
    spatial_axes = tuple(range(1, activations.ndim - 1))
    return activations.max(axis=spatial_axes).argmax(axis=-1)


def is_relu(activation):
    return activation in (keras.activations.relu, ops.relu)


def vjp(function, primal, cotangent):
    """`cotangent` pulled back through `function` at `primal`.

    The gradient of `sum(function(x) * cotangent)` at `x = primal`, computed
    natively on the current backend: `tf.GradientTape`, `jax.vjp` or
    `torch.autograd.grad`. For a linear `function` it is the transposed map.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        primal = tf.convert_to_tensor(primal)
        with tf.GradientTape() as tape:
            tape.watch(primal)
            outputs = function(primal)
        return tape.gradient(outputs, primal,
                             output_gradients=tf.cast(cotangent, outputs.dtype))
    if backend == "jax":
        import jax

        _, pullback = jax.vjp(function, ops.convert_to_tensor(primal))
        return pullback(ops.convert_to_tensor(cotangent))[0]
    if backend == "torch":
        import torch

        primal = ops.convert_to_tensor(primal).detach().requires_grad_(True)
        with torch.enable_grad():
            outputs = function(primal)
        (gradient,) = torch.autograd.grad(outputs, primal,
                                          grad_outputs=ops.convert_to_tensor(cotangent))
        return gradient
    raise ValueError(
        "The deconvnet needs gradients: use the tensorflow, jax or torch backend. "
        f"Received: backend={backend!r}"
    )
