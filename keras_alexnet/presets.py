"""Training and evaluation presets: the paper's augmentation as named objects.

Like torchvision's `references/classification/presets.py`: a preset turns a
dataset of decoded `(uint8 image, label)` pairs (see `keras_alexnet.data`)
into batches the model trains or is evaluated on.

Normalisation lives here, at the end of every preset: the model takes
`(pixels / 255 - mean) / std`. A model that normalises its inputs itself
(`AlexNet(include_preprocessing=True)`, e.g. with pretrained weights) takes
pixel values in [0, 255] instead: give it presets with `normalize=False`
(`EvalPreset.for_model(model)` does), so nothing is normalised twice. The
SavedModel export applies `EvalPreset.preprocess` inside its serving graph,
so served and evaluated images go through the same code.
"""

import dataclasses

import tensorflow as tf

from keras_alexnet._validation import check_positive_int
from keras_alexnet.augment import IMAGENET_EIGVAL, IMAGENET_EIGVEC
from keras_alexnet.imagenet import IMAGENET_MEAN, IMAGENET_STD
from keras_alexnet.models import normalizes_inputs

POLICIES = (None, "randaugment", "augmix")


def resize_short_side(image, size):
    """Resizes image(s) `(..., H, W, C)` so the shorter side is `size` (float32 out)."""
    shape = tf.cast(tf.shape(image)[-3:-1], tf.float32)
    scale = size / tf.reduce_min(shape)
    new_shape = tf.cast(tf.round(shape * scale), tf.int32)
    new_shape = tf.maximum(new_shape, size)  # guard against rounding below `size`
    return tf.image.resize(image, new_shape, method="bilinear", antialias=True)


def center_crop(image, size):
    """The central `size` x `size` window of an image at least that large."""
    shape = tf.shape(image)
    top = (shape[-3] - size) // 2
    left = (shape[-2] - size) // 2
    return image[..., top : top + size, left : left + size, :]


def normalize(image, mean, std):
    """float pixels in [0, 1] -> (pixels - mean) / std, per channel."""
    return (image - tf.constant(mean, image.dtype)) / tf.constant(std, image.dtype)


def _check_sizes(crop_size, resize_size):
    check_positive_int("crop_size", crop_size)
    if not isinstance(resize_size, int) or resize_size < crop_size:
        raise ValueError(
            "`resize_size` must be an integer >= `crop_size`. "
            f"Received: resize_size={resize_size!r}, crop_size={crop_size!r}"
        )


@dataclasses.dataclass(frozen=True)
class TrainPreset:
    """The paper's training augmentation (§4.1), then normalisation.

    Per image: resize the short side to `resize_size`, take the central
    `resize_size` square, a random `crop_size` crop of it, a horizontal flip
    with probability `flip_probability`, pixels to [0, 1], PCA lighting with
    `alpha ~ N(0, lighting_std)`; per batch: an optional keras-cv policy,
    then `(x - mean) / std`.

    Randomness is stateless and drawn per example from `seed`, so a seeded
    pipeline gives the same batches on every run however many threads decode
    it, and a new draw each epoch.

    Args:
        crop_size: side of the random crop: the model's input size.
        resize_size: the short side is resized to this, then centre-cropped.
        flip_probability: probability of a horizontal flip.
        lighting_std: standard deviation of PCA lighting's alpha; 0 turns it off.
        eigval, eigvec: PCA of the dataset's RGB pixels (ImageNet's by default;
            see `keras_alexnet.augment.estimate_pca_lighting`).
        mean, std: per-channel normalisation, pixels in [0, 1].
        policy: `None` (the paper), `"randaugment"` or `"augmix"`: a stronger
            keras-cv policy on top (needs the `cv` extra).
        normalize: `False` for a model that normalises its inputs itself:
            the batches then hold pixel values in [0, 255].
    """

    crop_size: int = 227
    resize_size: int = 256
    flip_probability: float = 0.5
    lighting_std: float = 0.1
    eigval: tuple = IMAGENET_EIGVAL
    eigvec: tuple = IMAGENET_EIGVEC
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    policy: str = None
    normalize: bool = True

    def __post_init__(self):
        _check_sizes(self.crop_size, self.resize_size)
        if not 0 <= self.flip_probability <= 1:
            raise ValueError(
                f"`flip_probability` must be in [0, 1]. Received: {self.flip_probability!r}"
            )
        if not self.lighting_std >= 0:
            raise ValueError(f"`lighting_std` must be >= 0. Received: {self.lighting_std!r}")
        if self.policy not in POLICIES:
            raise ValueError(f"`policy` must be one of {POLICIES}. Received: {self.policy!r}")

    def augment(self, image, seed):
        """One uint8 image and a `[2]` int seed -> float32 crop in [0, 1] (not normalised)."""
        crop_seed, flip_seed, lighting_seed = tf.unstack(
            tf.random.experimental.stateless_split(seed, 3)
        )
        image = center_crop(resize_short_side(image, self.resize_size), self.resize_size)
        image = tf.image.stateless_random_crop(
            image, [self.crop_size, self.crop_size, 3], seed=crop_seed
        )
        flip = tf.random.stateless_uniform([], flip_seed) < self.flip_probability
        image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
        image = image / 255.0
        if self.lighting_std > 0:
            alpha = tf.random.stateless_normal([3], lighting_seed, stddev=self.lighting_std)
            # offset[c] = sum_i eigvec[c, i] * alpha[i] * eigval[i], as PCALighting.
            offset = tf.linalg.matvec(tf.constant(self.eigvec, tf.float32),
                                      alpha * tf.constant(self.eigval, tf.float32))
            image = image + offset
        return image

    def dataset(self, examples, batch_size, shuffle=True, shuffle_buffer=10_000, seed=None,
                cache=False, deterministic=False, drop_remainder=True):
        """Batches of `(normalised float32 images, labels)` from `(uint8 image, label)`.

        Args:
            examples: `tf.data.Dataset` of decoded `(image, label)`.
            batch_size: global batch size.
            shuffle: shuffle examples (reshuffled every epoch).
            shuffle_buffer: shuffle buffer size.
            seed: seed for shuffling and augmentation; `None` for fresh randomness.
            cache: cache decoded examples in memory (small datasets).
            deterministic: keep element order fixed under parallelism
                (with a seed, runs then repeat exactly).
            drop_remainder: drop the last incomplete batch.
        """
        check_positive_int("batch_size", batch_size)
        if cache:
            examples = examples.cache()
        if shuffle:
            examples = examples.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip(examples, seeds).map(
            lambda example, example_seed: (self.augment(example[0], example_seed), example[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        dataset = dataset.batch(batch_size, drop_remainder=drop_remainder,
                                num_parallel_calls=tf.data.AUTOTUNE)
        policy = self._policy_layer(seed)

        def finish_batch(images, labels):
            if policy is not None:
                images = policy(tf.clip_by_value(images, 0.0, 1.0))
            if not self.normalize:
                return images * 255.0, labels
            return normalize(images, self.mean, self.std), labels

        dataset = dataset.map(finish_batch, num_parallel_calls=tf.data.AUTOTUNE)
        return _with_options(dataset, deterministic)

    def _policy_layer(self, seed):
        if self.policy is None:
            return None
        try:
            import keras_cv
        except ImportError as error:
            raise ImportError(
                f"policy={self.policy!r} needs keras-cv: pip install 'keras-alexnet[cv]'"
            ) from error
        if self.policy == "randaugment":
            return keras_cv.layers.RandAugment(value_range=(0, 1), seed=seed)
        return keras_cv.layers.AugMix(value_range=(0, 1), seed=seed)


@dataclasses.dataclass(frozen=True)
class EvalPreset:
    """Evaluation: short side to `resize_size`, central `crop_size` crop, normalise.

    `ten_crop=True` gives the paper's 10 crops per image instead (§4.1: the
    four corners and the centre of the central `resize_size` square, each
    also flipped): batches of shape `(batch, 10, crop, crop, 3)`; average the
    model's softmax over axis 1 (`keras_alexnet.evaluation.evaluate` does).
    `normalize=False` leaves pixel values in [0, 255], for a model that
    normalises its inputs itself.
    """

    crop_size: int = 227
    resize_size: int = 256
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    ten_crop: bool = False
    normalize: bool = True

    def __post_init__(self):
        _check_sizes(self.crop_size, self.resize_size)

    @classmethod
    def for_model(cls, model, **kwargs):
        """The preset that feeds `model`: crops of its input size, short side
        `max(256, crop)`, normalised unless the model normalises itself.

        Example:

        >>> model = keras_alexnet.AlexNet(weights="alexnet-owt-7be5be79.pth",
        ...                               include_preprocessing=True)
        >>> EvalPreset.for_model(model)
        EvalPreset(crop_size=224, resize_size=256, ..., normalize=False)
        """
        _, height, width, _ = model.input_shape
        if height is None or height != width:
            raise ValueError(
                "The model must take square images of a fixed size. "
                f"Received: input_shape={model.input_shape}"
            )
        settings = dict(crop_size=height, resize_size=max(256, height),
                        normalize=not normalizes_inputs(model))
        return cls(**{**settings, **kwargs})

    def preprocess(self, images):
        """uint8 image(s) `(..., H, W, 3)` of any size -> float32 centre crop(s), normalised
        (or pixel values in [0, 255] with `normalize=False`).

        Works on one image or a batch (a batch is resized as a whole, so its
        images share a size). Used by the SavedModel's serving signature.
        """
        images = center_crop(resize_short_side(images, self.resize_size), self.crop_size)
        return self._model_inputs(images)

    def ten_crops(self, image):
        """One uint8 image -> `(10, crop, crop, 3)` crops, normalised unless `normalize=False`."""
        square = center_crop(resize_short_side(image, self.resize_size), self.resize_size)
        far = self.resize_size - self.crop_size
        corners = [(0, 0), (0, far), (far, 0), (far, far), (far // 2, far // 2)]
        crops = tf.stack([square[top : top + self.crop_size, left : left + self.crop_size]
                          for top, left in corners])
        crops = tf.concat([crops, tf.reverse(crops, axis=[2])], axis=0)
        return self._model_inputs(crops)

    def _model_inputs(self, pixels):
        """Float pixel values in [0, 255] -> normalised, unless `normalize=False`."""
        if not self.normalize:
            return pixels
        return normalize(pixels / 255.0, self.mean, self.std)

    def dataset(self, examples, batch_size, cache=False, deterministic=True):
        """Batches of `(normalised images, labels)`, in order, keeping the last batch."""
        check_positive_int("batch_size", batch_size)
        if cache:
            examples = examples.cache()
        transform = self.ten_crops if self.ten_crop else self.preprocess
        dataset = examples.map(lambda image, label: (transform(image), label),
                               num_parallel_calls=tf.data.AUTOTUNE)
        dataset = dataset.batch(batch_size, num_parallel_calls=tf.data.AUTOTUNE)
        return _with_options(dataset, deterministic)


def _with_options(dataset, deterministic):
    options = tf.data.Options()
    options.deterministic = deterministic
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)
