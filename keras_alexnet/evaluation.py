"""Top-1 and top-5 error, the way the paper's tables report them, with 10-crop averaging."""

import numpy as np

from keras_alexnet.data.source import iterate_usable
from keras_alexnet.distribute import model_outputs
from keras_alexnet.models import normalizes_inputs


def top_k_error(probabilities, labels, k):
    """Fraction of examples whose label is not among the `k` highest scores."""
    probabilities = np.asarray(probabilities)
    labels = np.asarray(labels).reshape(-1)
    if probabilities.ndim != 2 or len(probabilities) != len(labels):
        raise ValueError(
            "`probabilities` must be (examples, classes) with one label per example. "
            f"Received shapes {probabilities.shape} and {labels.shape}"
        )
    k = min(k, probabilities.shape[1])
    top_k = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return float(np.mean(~np.any(top_k == labels[:, None], axis=1)))


def predict_probabilities(model, dataset, from_logits=False):
    """Softmax outputs and labels over a dataset of `(images, labels)` batches.

    Batches of shape `(batch, crops, H, W, 3)` (see `EvalPreset(ten_crop=True)`)
    are averaged over the crops, as in the paper's 10-crop test. A model
    that normalises its inputs itself (`include_preprocessing=True`) needs
    batches of pixel values in [0, 255]: `EvalPreset.for_model(model)`.
    Works under any `keras.distribution`; over several processes every
    process passes the same dataset and gets every probability.

    Raises:
        NoUsableImagesError: the dataset reads a folder where not one file
            decodes (`keras_alexnet.data.NoUsableImagesError`).
        ValueError: the dataset is empty, or normalised for a model that
            normalises itself.
    """
    takes_pixels = normalizes_inputs(model)
    all_probabilities, all_labels = [], []
    for images, labels in iterate_usable(dataset):
        images = np.asarray(images)
        # Pixel values are never negative; normalised images almost always are.
        if takes_pixels and images.min() < 0:
            raise ValueError(
                "The model normalises its inputs itself (include_preprocessing=True), "
                "but these images were normalised already (they hold negative values): "
                "build the dataset with `EvalPreset.for_model(model)` or "
                "`EvalPreset(normalize=False)`."
            )
        crops = images.shape[1] if images.ndim == 5 else 1
        flat = images.reshape((-1,) + images.shape[-3:])
        outputs = model_outputs(model, flat).astype("float64")
        if from_logits:
            outputs = np.exp(outputs - outputs.max(axis=1, keepdims=True))
            outputs /= outputs.sum(axis=1, keepdims=True)
        all_probabilities.append(outputs.reshape(len(images), crops, -1).mean(axis=1))
        all_labels.append(np.asarray(labels))
    if not all_probabilities:
        raise ValueError("The evaluation dataset is empty.")
    return np.concatenate(all_probabilities), np.concatenate(all_labels)


def evaluate(model, dataset, from_logits=False):
    """`{"top1_error", "top5_error", "examples"}` of a model on a dataset.

    See `predict_probabilities` for the dataset and the errors it raises.
    """
    probabilities, labels = predict_probabilities(model, dataset, from_logits)
    return {
        "top1_error": top_k_error(probabilities, labels, 1),
        "top5_error": top_k_error(probabilities, labels, 5),
        "examples": int(len(labels)),
    }
