"""ZFNet's layer probe (table 6): how well each layer's features separate classes."""

import numpy as np

from keras_alexnet._validation import check_positive_int
from keras_alexnet.visualize._model import (
    DEFAULT_BATCH_SIZE, feature_model, get_layer, labelled_batches, predict,
)


def _pooled(activations):
    """Global average pooling of `(batch, H, W, C)` maps; vectors unchanged."""
    activations = np.asarray(activations, "float64")
    if activations.ndim > 2:
        return activations.mean(axis=tuple(range(1, activations.ndim - 1)))
    return activations


class _FeatureMoments:
    """Sums over a training split, enough to fit a ridge regression later.

    The split is streamed once; only the sums of the features, of their
    outer products and of the features of each class are kept, so memory
    grows with the features' size squared, not with the dataset.
    """

    def __init__(self, dimension):
        self.count = 0
        self.total = np.zeros(dimension)
        self.gram = np.zeros((dimension, dimension))
        self.class_sums = np.zeros((dimension, 0))
        self.class_counts = np.zeros(0)

    def add(self, features, labels):
        grow = int(labels.max()) + 1 - len(self.class_counts)
        if grow > 0:  # a class not seen before
            self.class_counts = np.pad(self.class_counts, (0, grow))
            self.class_sums = np.pad(self.class_sums, ((0, 0), (0, grow)))
        self.count += len(features)
        self.total += features.sum(axis=0)
        self.gram += features.T @ features
        np.add.at(self.class_counts, labels, 1)
        np.add.at(self.class_sums.T, labels, features)

    def ridge_classifier(self, l2):
        """A function from features to predicted classes: ridge regression on
        one-hot labels, in closed form, on standardised features (constant
        ones, e.g. dead ReLU units, dropped), with a penalty of `l2` times
        the number of examples, so that it means the same for any dataset
        size."""
        mean = self.total / self.count
        centred_gram = self.gram - self.count * np.outer(mean, mean)
        variance = np.diag(centred_gram) / self.count
        # Constant features leave only rounding noise after centring.
        kept = variance > 1e-12 * np.maximum(np.diag(self.gram) / self.count, 1e-300)
        std = np.sqrt(variance[kept])
        gram = centred_gram[np.ix_(kept, kept)] / np.outer(std, std)
        targets = (self.class_sums - np.outer(mean, self.class_counts))[kept] / std[:, None]
        weights = np.linalg.solve(gram + l2 * self.count * np.eye(len(gram)), targets)
        intercept = self.class_counts / self.count

        def predict(features):
            standardised = (features[:, kept] - mean[kept]) / std
            return (standardised @ weights + intercept).argmax(axis=1)

        return predict


def _train_and_validation(model, data, batch_size):
    """Batched `(images, labels)` of both splits, from a Source or a pair."""
    if hasattr(data, "train") and hasattr(data, "validation"):  # keras_alexnet.data.Source
        if data.validation is None:
            raise ValueError(
                "The layer probe reports accuracy on the validation split, and "
                f"the source {data.name!r} has none."
            )
        height, width = model.input_shape[1:3]
        if height is None or height != width:
            raise ValueError(
                "A source is cropped to the model's square input; for a model with "
                f"input shape {model.input_shape}, pass (train, validation) datasets "
                "of preprocessed batches instead."
            )
        from keras_alexnet.presets import EvalPreset

        # The paper's proportions: 227 crops of images resized to 256,
        # normalised as the model's weights expect.
        preset = EvalPreset.for_model(model, resize_size=round(height * 256 / 227))
        return (preset.dataset(data.train, batch_size),
                preset.dataset(data.validation, batch_size))
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data
    raise ValueError(
        "`data` must be a keras_alexnet.data.Source or a (train, validation) pair of "
        f"datasets of (images, labels) batches. Received: data={data!r}"
    )


def _labelled_features(features, dataset, batch_size, split):
    for images, labels in labelled_batches(dataset, batch_size):
        if (labels is None or len(labels) != len(images)
                or not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any()):
            raise ValueError(
                f"The layer probe needs one integer label >= 0 per image in the {split} "
                "split: batches of (images, labels)."
            )
        yield [_pooled(outputs) for outputs in predict(features, images)], labels.astype("int64")


def layer_probe(model, data, layers=None, l2=0.01, batch_size=DEFAULT_BATCH_SIZE):
    """Validation accuracy of a linear classifier on each layer's features.

    ZFNet's table 6 measures how much each layer's features separate the
    classes of a new dataset by training a linear classifier on them. Here
    each layer's activations are globally average-pooled (one value per
    feature map; fully connected layers as they are) and a ridge regression
    on one-hot labels is fitted in closed form on the training split,
    streamed once; the accuracy is measured on the validation split.

    Reference: [Visualizing and Understanding Convolutional Networks](
    https://arxiv.org/abs/1311.2901) (Zeiler & Fergus 2013), §5.2, table 6.

    Args:
        model: a model from `keras_alexnet.AlexNet(...)`, trained or not.
        data: a `keras_alexnet.data.Source` (its splits are centre-cropped
            to the model's input with `keras_alexnet.presets.EvalPreset`,
            normalised unless the model does it itself),
            or a `(train, validation)` pair of datasets (`tf.data` or any
            iterable) of preprocessed `(images, integer labels)` batches.
        layers: layer names; by default every layer with weights but the
            last (for AlexNet `conv1`..`conv5`, `fc6`, `fc7`).
        l2: ridge penalty, relative to the number of training examples, on
            standardised features.
        batch_size: batch size of the source's splits.

    Returns:
        `{layer name: validation accuracy}`, in the order of `layers`.

    Examples:
        >>> model = keras_alexnet.AlexNet(input_shape=(67, 67, 3), classes=10)
        >>> accuracy = layer_probe(model, keras_alexnet.data.default_dataset())
        >>> accuracy["conv5"]   # chance is 0.1; random weights already do better
    """
    if layers is None:
        layers = [layer.name for layer in model.layers[:-1] if layer.weights]
    if isinstance(layers, str) or not layers:
        raise ValueError(
            f"`layers` must be a non-empty list of layer names. Received: layers={layers!r}"
        )
    for name in layers:
        get_layer(model, name)
    if not l2 > 0:
        raise ValueError(f"`l2` must be > 0. Received: l2={l2!r}")
    check_positive_int("batch_size", batch_size)
    train, validation = _train_and_validation(model, data, batch_size)
    features = feature_model(model, layers)
    moments = None
    for pooled, labels in _labelled_features(features, train, batch_size, "training"):
        moments = moments or [_FeatureMoments(values.shape[1]) for values in pooled]
        for layer_moments, values in zip(moments, pooled):
            layer_moments.add(values, labels)
    if moments is None:
        raise ValueError("The training split is empty.")
    classifiers = [layer_moments.ridge_classifier(l2) for layer_moments in moments]
    correct, total = np.zeros(len(layers)), 0
    for pooled, labels in _labelled_features(features, validation, batch_size, "validation"):
        correct += [np.sum(classify(values) == labels)
                    for classify, values in zip(classifiers, pooled)]
        total += len(labels)
    if total == 0:
        raise ValueError("The validation split is empty.")
    return {name: float(hits / total) for name, hits in zip(layers, correct)}
