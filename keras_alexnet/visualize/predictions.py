"""Figure 4 of AlexNet: top-5 predictions and nearest neighbours in fc7 space.

The paper (§6.1) probes the network's visual knowledge by the training
images whose last hidden layer (fc7) activations are closest, in Euclidean
distance, to those of a query image. `nearest_neighbors` streams the
training set in batches and keeps only the running k best, so the dataset
can be of any size; `images_at` fetches the neighbours afterwards, in a
second streaming pass.
"""

import keras
import numpy as np

from keras_alexnet._validation import check_positive_int
from keras_alexnet.visualize._model import (
    DEFAULT_BATCH_SIZE, RunningTopK, check_images, feature_model, image_batches, predict,
)


def class_probabilities(model, outputs):
    """The model's outputs as class probabilities: a softmax unless its last
    layer already applies one (`classifier_activation=None` gives logits)."""
    outputs = np.asarray(outputs, "float64")
    if getattr(model.layers[-1], "activation", None) is keras.activations.softmax:
        return outputs
    exponentials = np.exp(outputs - outputs.max(axis=-1, keepdims=True))
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


def check_classifier(model):
    if len(model.output_shape) != 2:
        raise ValueError(
            "This needs a classifier: a model with class scores as output "
            "(`AlexNet(include_top=True)`). Received: a model with output shape "
            f"{model.output_shape}"
        )


def _batched_predictions(model, images, batch_size):
    """One output array per model output, over `images` predicted in batches."""
    batches = [predict(model, images[start:start + batch_size])
               for start in range(0, len(images), batch_size)]
    return [np.concatenate(parts) for parts in zip(*batches)]


def top_predictions(model, images, k=5, batch_size=DEFAULT_BATCH_SIZE):
    """The `k` most probable classes of each image (AlexNet figure 4, left).

    Reference: [ImageNet Classification with Deep Convolutional Neural Networks](
    https://papers.nips.cc/paper/4824-imagenet-classification-with-deep-convolutional-neural-networks),
    §6.1.

    Args:
        model: a classifier from `keras_alexnet.AlexNet(...)` (softmax or
            logits output).
        images: `(batch, H, W, 3)` preprocessed images.
        k: number of classes, at most the model's.
        batch_size: images per forward pass.

    Returns:
        `(classes, probabilities)`: int and float arrays `(batch, k)`, most
        probable first.

    Examples:
        >>> classes, probabilities = top_predictions(model, images)
        >>> plotting.plot_predictions(images, classes, probabilities, source.class_names)
    """
    check_classifier(model)
    check_positive_int("k", k)
    check_positive_int("batch_size", batch_size)
    if k > model.output_shape[-1]:
        raise ValueError(
            f"`k` must be at most the number of classes, {model.output_shape[-1]}. "
            f"Received: k={k}"
        )
    images = check_images(images)
    (outputs,) = _batched_predictions(model, images, batch_size)
    probabilities = class_probabilities(model, outputs)
    classes = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return classes, np.take_along_axis(probabilities, classes, axis=1)


def nearest_neighbors(model, queries, dataset, layer="fc7", k=6,
                      batch_size=DEFAULT_BATCH_SIZE):
    """The dataset images whose `layer` activations are closest to each query's.

    AlexNet §6.1 and figure 4: Euclidean distance between fc7 activations
    (inference mode: no dropout). The dataset is read once, batch by batch;
    only each query's running `k` best distances and indices are kept. Ties
    go to the earlier image. Convolutional activations are flattened.

    Reference: [ImageNet Classification with Deep Convolutional Neural Networks](
    https://papers.nips.cc/paper/4824-imagenet-classification-with-deep-convolutional-neural-networks),
    §6.1.

    Args:
        model: a model from `keras_alexnet.AlexNet(...)`.
        queries: `(queries, H, W, 3)` preprocessed images.
        dataset: the images to search: a `tf.data.Dataset` or iterable of
            batches (image arrays, or tuples such as `(images, labels)`),
            or a NumPy array of images. Preprocessed like the queries, and
            in a fixed order to fetch the neighbours back with `images_at`.
        layer: layer whose activations are compared, `"fc7"` in the paper.
        k: neighbours per query.
        batch_size: images per forward pass for the queries and for a NumPy
            `dataset`.

    Returns:
        `(indices, distances)`: int and float arrays `(queries, k)`, nearest
        first. Indices count images in the dataset's iteration order.

    Examples:
        >>> train = presets.EvalPreset(67, 76).dataset(source.train, batch_size=64)
        >>> indices, distances = nearest_neighbors(model, queries, train, k=6)
        >>> neighbours = images_at(train, indices)     # (queries, 6, 67, 67, 3)
    """
    check_positive_int("k", k)
    check_positive_int("batch_size", batch_size)
    features = feature_model(model, [layer])
    queries = check_images(queries, "queries")
    (query_features,) = _batched_predictions(features, queries, batch_size)
    query_features = query_features.reshape(len(queries), -1).astype("float64")
    query_norms = (query_features**2).sum(axis=1, keepdims=True)
    nearest, seen = RunningTopK(k, largest=False), 0
    for images in image_batches(dataset, batch_size):
        (batch_features,) = predict(features, images)
        batch_features = batch_features.reshape(len(images), -1).astype("float64")
        squared = (query_norms + (batch_features**2).sum(axis=1)
                   - 2.0 * query_features @ batch_features.T)
        nearest.update(np.sqrt(np.maximum(squared, 0.0)), np.arange(seen, seen + len(images)))
        seen += len(images)
    if seen < k:
        raise ValueError(
            f"The dataset has {seen} images, fewer than `k`. Received: k={k}"
        )
    return nearest.indices, nearest.scores
