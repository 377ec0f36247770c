"""The ILSVRC-2012 (ImageNet-1k) classes and pixel statistics, shipped with the package.

`imagenet_classes.tsv` holds one line per class, `<wnid>\\t<name>`, line `i`
being class `i`: the 1000 WordNet ids sorted, the order of Caffe's
`synset_words.txt`, torchvision, keras.applications and TensorFlow Datasets'
`imagenet2012` labels. The names are torchvision's (its two duplicate names
made distinct: "crane bird", "maillot tank suit"). Nothing is downloaded.
"""

import functools
from importlib import resources

import keras
import numpy as np

# Per-channel RGB mean and standard deviation of ImageNet pixels in [0, 1]
# (torchvision's, and the presets' normalisation).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CLASSES_FILE = "imagenet_classes.tsv"


@functools.lru_cache(maxsize=None)
def imagenet_classes():
    """The 1000 ILSVRC-2012 classes as a tuple of `(wnid, name)`, class 0 first.

    Examples:
        >>> keras_alexnet.imagenet.imagenet_classes()[0]
        ('n01440764', 'tench')
    """
    text = resources.files("keras_alexnet").joinpath(CLASSES_FILE).read_text("utf-8")
    return tuple(tuple(line.split("\t")) for line in text.splitlines())


def imagenet_class_names():
    """The 1000 human-readable class names, class 0 first ("tench", "goldfish", ...)."""
    return [name for _, name in imagenet_classes()]


def decode_predictions(probabilities, top=5):
    """Decodes ImageNet predictions, as `keras.applications` does.

    Args:
        probabilities: scores of shape `(images, 1000)` (a NumPy array or a
            backend tensor), e.g. the output of an `AlexNet` with ImageNet
            weights.
        top: how many classes to return per image.

    Returns:
        One list per image of `(wnid, class name, score)` tuples, highest
        score first.

    Examples:
        >>> model = keras_alexnet.AlexNet(weights="bvlc_alexnet.caffemodel",
        ...                               include_preprocessing=True)
        >>> keras_alexnet.decode_predictions(model.predict(images), top=3)[0]
        [('n02123045', 'tabby', 0.61), ('n02123159', 'tiger cat', 0.25), ...]
    """
    scores = np.asarray(keras.ops.convert_to_numpy(probabilities))
    classes = imagenet_classes()
    if scores.ndim != 2 or scores.shape[1] != len(classes):
        raise ValueError(
            "`decode_predictions` expects a batch of ImageNet predictions, shape "
            f"(images, {len(classes)}). Received: shape={scores.shape}"
        )
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= len(classes):
        raise ValueError(
            f"`top` must be an integer from 1 to {len(classes)}. Received: top={top!r}"
        )
    best = np.argsort(-scores, axis=1, kind="stable")[:, :top]
    return [[(*classes[index], float(row[index])) for index in indices]
            for row, indices in zip(scores, best)]
