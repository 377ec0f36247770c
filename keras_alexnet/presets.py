"""Training and evaluation presets: the paper's augmentation as named objects.

Like torchvision's `references/classification/presets.py`: a preset turns a
dataset of decoded `(uint8 image, label)` pairs (see `keras_alexnet.data`)
into batches the model trains or is evaluated on. `TrainPreset` also takes
encoded images (JPEG or PNG bytes, as a prepared folder holds them), and
decodes a JPEG that is already a `resize_size` square only in its crop
window.

Normalisation lives here, at the end of every preset: the model takes
`(pixels / 255 - mean) / std`, ImageNet's statistics by default. Pretrained
weights may expect others (Caffe's: its mean, no scaling), which the model
records (`keras_alexnet.models.pixel_statistics`): `EvalPreset.for_model(model)`
and `TrainPreset.for_model(model)` use them. A model that normalises its
inputs itself (`AlexNet(include_preprocessing=True)`) takes pixel values in
[0, 255] instead: `for_model` gives it presets with `normalize=False`, so
nothing is normalised twice. The
SavedModel export applies `EvalPreset.preprocess` inside its serving graph,
so served and evaluated images go through the same code.
"""

import dataclasses
import os

import tensorflow as tf

from keras_alexnet._validation import check_positive_int
from keras_alexnet.augment import IMAGENET_EIGVAL, IMAGENET_EIGVEC
from keras_alexnet.data.folder import decode_rgb
from keras_alexnet.imagenet import IMAGENET_MEAN, IMAGENET_STD
from keras_alexnet.models import normalizes_inputs, pixel_statistics

POLICIES = (None, "randaugment", "augmix")
# The default shuffle buffer holds as many decoded training images (uint8
# squares of `resize_size`, 196,608 bytes each at 256) as fit in this.
SHUFFLE_BUFFER_BYTES = 512 * 1024**2


def square_bytes(resize_size):
    """Bytes of one decoded training image as the presets buffer and cache it."""
    return resize_size * resize_size * 3


def _short_side_shape(shape, size):
    """The `[height, width]` (int32) of an image of `shape` whose shorter side is resized
    to `size`."""
    shape = tf.cast(shape, tf.float32)
    new_shape = tf.cast(tf.round(shape * (size / tf.reduce_min(shape))), tf.int32)
    return tf.maximum(new_shape, size)  # guard against rounding below `size`


def resize_short_side(image, size):
    """Resizes image(s) `(..., H, W, C)` so the shorter side is `size` (float32 out)."""
    new_shape = _short_side_shape(tf.shape(image)[-3:-1], size)
    return tf.image.resize(image, new_shape, method="bilinear", antialias=True)


def center_crop(image, size):
    """The central `size` x `size` window of an image at least that large."""
    shape = tf.shape(image)
    top = (shape[-3] - size) // 2
    left = (shape[-2] - size) // 2
    return image[..., top : top + size, left : left + size, :]


def resize_and_center_crop(images, resize_size, crop_size):
    """`center_crop(resize_short_side(images, resize_size), crop_size)`, computing only the crop.

    Resizing the whole image first would take `resize_size` times the long
    side's stretch: a 12000x3 image resized to short side 256 is 3 GB of
    float32. Instead only the input rows and columns that the crop's pixels
    read (the crop's window in the input, widened by the resize kernel's
    reach) are resized, by the same scale and to the same positions as
    `tf.image.resize` would (its antialiased bilinear resize is
    `ScaleAndTranslate` with the triangle kernel): the same values, to
    float32 rounding, in memory proportional to the crop.

    Args:
        images: one image `(H, W, C)` or a batch `(N, H, W, C)`, any real dtype.
        resize_size: the short side is resized to this.
        crop_size: side of the central crop, at most `resize_size`.

    Returns:
        float32 `(crop_size, crop_size, C)`, or `(N, crop_size, crop_size, C)`.
    """
    images = tf.convert_to_tensor(images)
    batch = images if images.shape.rank == 4 else images[tf.newaxis]
    shape = tf.shape(batch)[1:3]
    resized = _short_side_shape(shape, resize_size)
    scale = tf.cast(resized, tf.float32) / tf.cast(shape, tf.float32)
    corner = tf.cast((resized - crop_size) // 2, tf.float32)  # the crop's, in `resized`
    # The triangle kernel reaches one input pixel either side, 1 / scale when
    # antialiasing a reduction; one more for rounding.
    reach = tf.math.ceil(tf.maximum(1.0, 1.0 / scale)) + 1.0
    start = tf.maximum(tf.cast(tf.floor(corner / scale - reach), tf.int32), 0)
    end = tf.minimum(tf.cast(tf.math.ceil((corner + crop_size) / scale + reach), tf.int32),
                     shape)
    window = batch[:, start[0] : end[0], start[1] : end[1], :]
    # Output pixel x samples the input at (x + 0.5 - translation) / scale - 0.5:
    # shifted by the crop's corner in the output and the window's in the input.
    translation = scale * tf.cast(start, tf.float32) - corner
    crops = tf.raw_ops.ScaleAndTranslate(
        images=window, size=[crop_size, crop_size], scale=scale, translation=translation,
        kernel_type="triangle", antialias=True)
    return crops if images.shape.rank == 4 else crops[0]


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


def _settings_for_model(model):
    """The preset settings that feed `model`: crops of its input size, short side
    `max(256, crop)`, its weights' statistics, not normalised if it normalises itself."""
    _, height, width, _ = model.input_shape
    if height is None or height != width:
        raise ValueError(
            "The model must take square images of a fixed size. "
            f"Received: input_shape={model.input_shape}"
        )
    pixel_mean, pixel_std = pixel_statistics(model)
    return dict(crop_size=height, resize_size=max(256, height),
                mean=tuple(value / 255 for value in pixel_mean),
                std=tuple(value / 255 for value in pixel_std),
                normalize=not normalizes_inputs(model))


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
            keras-cv policy on top (needs the `cv` extra; without it the
            preset raises ImportError when it is made).
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
        if self.policy is not None:
            # Now, not when the first epoch's pipeline is traced, where
            # tf.data would wrap the ImportError in a StagingError.
            _import_keras_cv(self.policy)

    @classmethod
    def for_model(cls, model, **kwargs):
        """The training preset for `model`, as `EvalPreset.for_model` (its input
        size, its weights' statistics, not normalised if it normalises itself);
        `kwargs` set the augmentation.

        Examples:
            >>> TrainPreset.for_model(keras_alexnet.AlexNet(weights="bvlc_alexnet.caffemodel"))
        """
        return cls(**{**_settings_for_model(model), **kwargs})

    def square(self, image):
        """One uint8 image -> its central `resize_size` square (short side resized), uint8.

        The deterministic part of the augmentation, done once per image before
        the shuffle buffer and the cache (as the paper down-sampled every
        image to 256x256 once). An image already of that size passes as it is.
        Only the part the square keeps is resized (`resize_and_center_crop`),
        so a very wide or tall image costs no more memory than its square.
        """
        size = self.resize_size
        shape = tf.shape(image)
        return tf.cond(
            tf.logical_and(tf.equal(shape[0], size), tf.equal(shape[1], size)),
            lambda: image,
            lambda: tf.cast(tf.round(tf.clip_by_value(
                resize_and_center_crop(image, size, size), 0.0, 255.0)), tf.uint8),
        )

    def augment(self, image, seed):
        """One uint8 image and a `[2]` int seed -> float32 crop in [0, 1] (not normalised)."""
        return self.random_crop(self.square(image), seed)

    def random_crop(self, square, seed):
        """A `square()` and a `[2]` int seed -> the random part: crop, flip, lighting."""
        return _with_lighting(*self._window(square, seed))

    def random_crop_encoded(self, contents, seed):
        """JPEG or PNG bytes and a `[2]` int seed -> what `augment` gives for the decoded image.

        A JPEG that already is a `resize_size` square (a prepared folder's)
        is decoded only inside the crop window, with
        `tf.image.decode_and_crop_jpeg`, and never resized: the same window
        as `random_crop`, with the same pixels as decoding the whole image
        and cropping it, except beside the window's left and right edges
        where the JPEG's colour is stored at half resolution (the JPEG
        default; `tests/test_prepared.py` bounds the difference). Any other
        image is decoded whole and goes through `square` first.
        """
        return _with_lighting(*self._window_encoded(contents, seed))

    def _window(self, square, seed):
        """`random_crop` before the float conversion: `(uint8 crop, lighting offset [3])`."""
        crop_seed, flip_seed, lighting_seed = self._split_seed(seed)
        square.set_shape([self.resize_size, self.resize_size, 3])
        top, left = self._crop_corner(crop_seed)
        crop = square[top : top + self.crop_size, left : left + self.crop_size]
        return self._flip(crop, flip_seed), self._lighting_offset(lighting_seed)

    def _window_encoded(self, contents, seed):
        """`random_crop_encoded` before the float conversion: `(uint8 crop, offset [3])`."""
        crop_seed, flip_seed, lighting_seed = self._split_seed(seed)
        top, left = self._crop_corner(crop_seed)
        size = self.crop_size

        def is_square_jpeg():
            shape = tf.image.extract_jpeg_shape(contents)
            return tf.logical_and(tf.equal(shape[0], self.resize_size),
                                  tf.equal(shape[1], self.resize_size))

        crop = tf.cond(
            tf.cond(tf.io.is_jpeg(contents), is_square_jpeg, lambda: tf.constant(False)),
            lambda: tf.image.decode_and_crop_jpeg(contents, tf.stack([top, left, size, size]),
                                                  channels=3),
            lambda: self.square(decode_rgb(contents))[top : top + size, left : left + size],
        )
        crop.set_shape([size, size, 3])
        return self._flip(crop, flip_seed), self._lighting_offset(lighting_seed)

    def _split_seed(self, seed):
        """The crop's, the flip's and the lighting's seeds of one example."""
        return tf.unstack(tf.random.experimental.stateless_split(seed, 3))

    def _crop_corner(self, crop_seed):
        """The crop's top-left corner in the square: `tf.image.stateless_random_crop`'s draw."""
        limit = self.resize_size - self.crop_size + 1
        offset = tf.random.stateless_uniform([3], crop_seed, maxval=tf.int32.max,
                                             dtype=tf.int32) % tf.constant([limit, limit, 1])
        return offset[0], offset[1]

    def _flip(self, crop, flip_seed):
        """The crop, mirrored left to right with probability `flip_probability`."""
        flip = tf.random.stateless_uniform([], flip_seed) < self.flip_probability
        return tf.cond(flip, lambda: tf.reverse(crop, axis=[1]), lambda: crop)

    def _lighting_offset(self, lighting_seed):
        """PCA lighting's RGB offset for pixels in [0, 1] (zeros when `lighting_std` is 0)."""
        if self.lighting_std == 0:
            return tf.zeros([3], tf.float32)
        alpha = tf.random.stateless_normal([3], lighting_seed, stddev=self.lighting_std)
        # offset[c] = sum_i eigvec[c, i] * alpha[i] * eigval[i], as PCALighting.
        return tf.linalg.matvec(tf.constant(self.eigvec, tf.float32),
                                alpha * tf.constant(self.eigval, tf.float32))

    def dataset(self, examples, batch_size, shuffle=True, shuffle_buffer=None, seed=None,
                cache=False, deterministic=None, drop_remainder=True):
        """Batches of `(normalised float32 images, labels)` from `(image, label)` examples.

        Each decoded image is reduced to its central `resize_size` square
        (uint8) first; the cache and the shuffle buffer hold those squares,
        so their memory is `square_bytes(resize_size)` per image whatever the
        size of the files. Encoded images (JPEG or PNG bytes) stay encoded
        until `random_crop_encoded` crops them.

        Shuffling here mixes the images within the buffer only. For a large
        folder listed class by class, pass examples whose file order is
        already shuffled every epoch: `source.examples("train", shuffle=True,
        seed=seed)` (what `keras_alexnet.training` does).

        Args:
            examples: `tf.data.Dataset` of `(uint8 image, label)` or
                `(encoded image bytes, label)`.
            batch_size: global batch size.
            shuffle: shuffle examples (reshuffled every epoch).
            shuffle_buffer: images in the shuffle buffer; by default as many as
                fit in `SHUFFLE_BUFFER_BYTES` (512 MiB) as squares.
            seed: seed for shuffling and augmentation; `None` for fresh randomness.
            cache: keep the decoded squares (or the encoded bytes) in memory
                after the first epoch (`count * square_bytes(resize_size)`
                bytes for squares).
            deterministic: keep element order fixed under parallel decoding;
                by default exactly when `seed` is given, so a seeded pipeline
                repeats exactly (at a cost in speed measured in BENCHMARKS.md).
            drop_remainder: drop the last incomplete batch.
        """
        check_positive_int("batch_size", batch_size)
        shuffle_buffer = self._shuffle_buffer(shuffle_buffer)
        deterministic = seed is not None if deterministic is None else deterministic
        squares = self._squares(examples, cache)
        if shuffle:
            squares = squares.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = self._batches(squares, seeds, batch_size, drop_remainder, seed)
        return _with_options(dataset, deterministic)

    def epochs(self, source, batch_size, seed=None, first_epoch=0, cache=False,
               shuffle_buffer=None, skipped_log=None, data_service=None):
        """An endless dataset of training batches from a `Source`, epoch after epoch.

        Epoch `e` is drawn from `(seed, e)` alone: its file order (shuffled
        before decoding, see `Source.examples`), its shuffle buffer and every
        crop, flip and lighting offset. So a seeded run repeats exactly, and
        a run resumed at epoch `e` (`first_epoch=e`) sees what an
        uninterrupted run would have. Each epoch ends with its last full
        batch; train with `steps_per_epoch = source.counts["train"] //
        batch_size` (fewer if some files cannot be decoded: the next epoch
        then starts a few batches early).

        A source of `resize_size` JPEG squares (`source.jpeg_size`, a
        prepared folder) is read as JPEG bytes and each image decoded only in
        its crop window (`random_crop_encoded`), unless `cache` is set.

        With `data_service`, the tf.data service's workers read, decode and
        augment each epoch and send batches (see
        `keras_alexnet.data_service.distribute_epochs`): the epoch's order
        and each example's crop, flip and lighting (seeded by the example's
        key) still come from `(seed, e)`, but which worker makes which batch
        does not, so the batches are not the same from run to run.
        Undecodable files are then named on the workers' standard error.

        Args:
            source: a `keras_alexnet.data.Source` with a `"train"` split.
            batch_size: global batch size; with a `data_service` read by
                several processes (`EpochJobs`), this process's part of it.
            seed: base seed; `None` draws one.
            first_epoch: the epoch to start from.
            cache: decode the training split once, in listing order, and keep
                its squares in memory (`count * square_bytes(resize_size)`
                bytes); each epoch then shuffles all of them. Not with
                `data_service`.
            shuffle_buffer: images in the shuffle buffer when not cached; by
                default as many as fit in `SHUFFLE_BUFFER_BYTES`.
            skipped_log: where a folder source names files it cannot decode
                (see `Source.examples`).
            data_service: the tf.data service dispatcher, e.g.
                `"grpc://host:5050"`, to make the batches on its workers, or
                the `keras_alexnet.data_service.EpochJobs` the processes of
                a run share.

        Raises:
            NoUsableImagesError: no training image decodes (see
                `Source.check_usable`; not checked with `data_service`).
            ValueError: the split holds fewer images than one batch.
        """
        check_positive_int("batch_size", batch_size)
        shuffle_buffer = self._shuffle_buffer(shuffle_buffer)
        # A seeded stream keeps its order under parallel decoding, so it
        # repeats exactly; an unseeded one lets whichever thread finishes first
        # go first (the cost of order is measured in BENCHMARKS.md).
        deterministic = seed is not None
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little")
        count = source.counts.get("train")
        # Epochs of no full batch would follow each other forever. The
        # service's workers may read files this process cannot: there only
        # the count is checked.
        if data_service is None:
            source.check_usable("train")
        if count is not None and count < batch_size:
            raise ValueError(
                f"The 'train' split of {source.name} has {count} images, fewer than one batch "
                f"of {batch_size}. Received: batch_size={batch_size}")

        def epoch_seed(epoch):
            return tf.constant(seed, tf.int64) * 1_000_003 + tf.cast(epoch, tf.int64)

        if data_service is not None:
            from keras_alexnet.data_service import distribute_epochs

            if cache:
                raise ValueError("cache=True cannot apply with a data_service: the workers "
                                 "read every epoch anew.")

            def service_epoch(epoch):  # runs on the service's workers
                examples = source.units("train", seed, epoch)
                if examples.element_spec[0].dtype != tf.string:
                    examples = examples.map(
                        lambda image, label, key: (self.square(image), label, key),
                        num_parallel_calls=tf.data.AUTOTUNE)
                examples = _shuffle_by_seed_alone(examples, shuffle_buffer, epoch_seed(epoch))
                window = self._window_function(examples)
                windows = examples.map(
                    lambda image, label, key: (
                        *window(image, tf.stack([epoch_seed(epoch), key])), label),
                    num_parallel_calls=tf.data.AUTOTUNE)
                return self._finish_batches(windows, batch_size, False, seed)

            return distribute_epochs(service_epoch, data_service, batch_size, count,
                                     first_epoch=first_epoch)

        if cache:
            if count is None:
                raise ValueError("cache=True needs the size of the training split.")
            cached = self._squares(source.examples("train", skipped_log=skipped_log),
                                   cache=True)
            shuffle_buffer = count
        encoded = not cache and source.jpeg_size == self.resize_size

        def one_epoch(epoch):
            if cache:
                squares = cached
            elif encoded:
                squares = source.units("train", seed, epoch).map(
                    lambda image, label, key: (image, label))
            else:
                squares = self._squares(source.examples(
                    "train", shuffle=True, seed=seed, epoch=epoch, skipped_log=skipped_log))
            squares = _shuffle_by_seed_alone(squares, shuffle_buffer, epoch_seed(epoch))
            seeds = tf.data.Dataset.range(2**62).map(
                lambda position: tf.stack([epoch_seed(epoch), position]))
            return self._batches(squares, seeds, batch_size, True, seed)

        dataset = tf.data.Dataset.range(first_epoch, 2**62).flat_map(one_epoch)
        return _with_options(dataset, deterministic)

    def _shuffle_buffer(self, shuffle_buffer):
        if shuffle_buffer is None:
            return max(1, SHUFFLE_BUFFER_BYTES // square_bytes(self.resize_size))
        check_positive_int("shuffle_buffer", shuffle_buffer)
        return shuffle_buffer

    def _squares(self, examples, cache=False):
        """Decoded examples -> their squares; encoded ones pass as they are (cropped later)."""
        if examples.element_spec[0].dtype != tf.string:
            examples = examples.map(lambda image, label: (self.square(image), label),
                                    num_parallel_calls=tf.data.AUTOTUNE)
        return examples.cache() if cache else examples

    def _window_function(self, examples):
        """`_window` for squares, `_window_encoded` for encoded images."""
        if examples.element_spec[0].dtype == tf.string:
            return self._window_encoded
        return self._window

    def _batches(self, squares, seeds, batch_size, drop_remainder, seed):
        """Random crops of `(square, label)` with one `[2]` seed each, batched and normalised."""
        window = self._window_function(squares)
        dataset = tf.data.Dataset.zip(squares, seeds).map(
            lambda example, example_seed: (*window(example[0], example_seed), example[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        return self._finish_batches(dataset, batch_size, drop_remainder, seed)

    def _finish_batches(self, windows, batch_size, drop_remainder, seed):
        """`(uint8 crop, lighting offset, label)` -> normalised float32 batches.

        The crops are batched as uint8 and converted to float once per
        batch: pixels / 255 + offset, the policy if any, then normalisation,
        which without a policy is one multiply and one add per pixel.
        """
        dataset = windows.batch(batch_size, drop_remainder=drop_remainder,
                                num_parallel_calls=tf.data.AUTOTUNE)
        policy = self._policy_layer(seed)

        def finish_batch(crops, offsets, labels):
            offsets = offsets[:, None, None, :]
            if policy is not None:
                images = policy(tf.clip_by_value(_with_lighting(crops, offsets), 0.0, 1.0))
                if not self.normalize:
                    return images * 255.0, labels
                return normalize(images, self.mean, self.std), labels
            if not self.normalize:  # pixel values in [0, 255], lighting included
                return tf.cast(crops, tf.float32) + 255.0 * offsets, labels
            scale = 1 / (255 * tf.constant(self.std, tf.float32))
            return (tf.cast(crops, tf.float32) * scale + normalize(offsets, self.mean, self.std),
                    labels)

        return dataset.map(finish_batch, num_parallel_calls=tf.data.AUTOTUNE)

    def _policy_layer(self, seed):
        if self.policy is None:
            return None
        keras_cv = _import_keras_cv(self.policy)
        if self.policy == "randaugment":
            return keras_cv.layers.RandAugment(value_range=(0, 1), seed=seed)
        return keras_cv.layers.AugMix(value_range=(0, 1), seed=seed)


def _import_keras_cv(policy):
    """The keras_cv module a `policy` needs; ImportError naming the extra to install."""
    try:
        import keras_cv
    except ImportError as error:
        raise ImportError(
            f"policy={policy!r} needs keras-cv: pip install 'keras-alexnet[cv]'"
        ) from error
    return keras_cv


def _shuffle_by_seed_alone(dataset, buffer_size, seed):
    """`dataset.shuffle(buffer_size, seed=seed)` whose order depends on `seed` alone.

    Call it while a `tf.data` function is traced (`flat_map`, a service
    epoch). The traced graph inherits TensorFlow's global seed, which
    `shuffle` would combine with `seed`: the epoch's order would depend on
    whether `tf.random.set_seed` or `keras.utils.set_random_seed` ran
    before, and a global seed of 0 makes a tensor `seed` fail outright.
    Clearing the seed of the graph being traced, and of no other, gives the
    order a fresh process gets.
    """
    tf.compat.v1.get_default_graph().seed = None
    return dataset.shuffle(buffer_size, seed=seed)


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
        `max(256, crop)`, normalised with the statistics of its weights
        (`pixel_statistics`) unless the model normalises itself; `kwargs`
        override any of these.

        Examples:
            >>> model = keras_alexnet.AlexNet(weights="bvlc_alexnet.caffemodel")
            >>> EvalPreset.for_model(model).std   # Caffe: pixels minus its mean, unscaled
            (0.00392156862745098, 0.00392156862745098, 0.00392156862745098)
        """
        return cls(**{**_settings_for_model(model), **kwargs})

    def preprocess(self, images):
        """uint8 image(s) `(..., H, W, 3)` of any size -> float32 centre crop(s), normalised
        (or pixel values in [0, 255] with `normalize=False`).

        Works on one image or a batch (a batch is resized as a whole, so its
        images share a size). Used by the SavedModel's serving signature.
        """
        images = resize_and_center_crop(images, self.resize_size, self.crop_size)
        return self._model_inputs(images)

    def ten_crops(self, image):
        """One uint8 image -> `(10, crop, crop, 3)` crops, normalised unless `normalize=False`."""
        square = resize_and_center_crop(image, self.resize_size, self.resize_size)
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
        """Batches of `(normalised images, labels)`, in order, keeping the last batch.

        `cache` keeps the preprocessed float32 crops in memory after the first
        pass (`crop_size**2 * 3 * 4` bytes per image, 10 times that with
        `ten_crop`).
        """
        check_positive_int("batch_size", batch_size)
        transform = self.ten_crops if self.ten_crop else self.preprocess
        dataset = examples.map(lambda image, label: (transform(image), label),
                               num_parallel_calls=tf.data.AUTOTUNE)
        if cache:
            dataset = dataset.cache()
        dataset = dataset.batch(batch_size, num_parallel_calls=tf.data.AUTOTUNE)
        return _with_options(dataset, deterministic)


def _with_lighting(crops, offsets):
    """uint8 crop(s) and their lighting offsets -> float32 pixels in [0, 1] plus the offsets."""
    return tf.cast(crops, tf.float32) / 255.0 + offsets


def _with_options(dataset, deterministic):
    options = tf.data.Options()
    options.deterministic = deterministic
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)
