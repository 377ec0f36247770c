"""The paper's PCA lighting augmentation (§4.1) as a Keras preprocessing layer."""

import keras
import numpy as np

# Keras' own image layers get their tf.data safety from DataLayer: inside a
# tf.data graph it switches the layer's maths to TensorFlow ops whatever the
# backend. Private in Keras 3.15, but shipped; a custom layer needs the same.
from keras.src.layers.preprocessing.data_layer import DataLayer

# ImageNet RGB statistics, pixels in [0, 1] (fb.resnet.torch, datasets/imagenet.lua):
# eigenvalues and eigenvectors of the covariance of all pixels of a random subset of
# training images, pooled. Their sum, 0.2408, is ImageNet's global pixel variance
# (a global std of about 0.28 per channel, as torchvision #1439 measured). It exceeds
# what IMAGENET_STD (0.229, 0.224, 0.225) implies because that std is the mean of
# per-image stds (torchvision #1965), which leaves out the variation between images.
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


@keras.saving.register_keras_serializable(package="keras_alexnet")
class PCALighting(DataLayer):
    """Adds the paper's per-image PCA colour offset (Krizhevsky et al. 2012, §4.1).

    For each image it draws `alpha ~ N(0, alpha_std)` (3 values) and adds the
    same RGB offset `sum_i eigvec[:, i] * alpha[i] * eigval[i]` to every
    pixel, where `eigval`/`eigvec` are the eigenvalues and eigenvectors (as
    columns, rows R, G, B) of the covariance of RGB pixel values in [0, 1],
    all pixels of the dataset pooled: the paper's formula on the scale of
    fb.resnet.torch, whose ImageNet values are the defaults, and the scale
    `estimate_pca_lighting` returns, so your own estimate gives the same
    strength of lighting for the same statistics. (The eigenvalues are
    variances, so the offset is not invariant to the pixel scale: on [0, 255]
    pixels use `value_range=(0, 255)`, which scales the offset, never
    eigenvalues measured on that scale.) Outputs are not clipped (as in the
    paper).

    Works on one image `(H, W, 3)` or a batch `(N, H, W, 3)`, inside a model
    or inside `tf.data.Dataset.map` under every backend. Only active in
    training, like Keras' random augmentation layers: call it with
    `training=False` for the identity. Seeded layers repeat exactly.

    Args:
        alpha_std: standard deviation of alpha (the paper's 0.1).
        eigval: 3 eigenvalues, e.g. from `estimate_pca_lighting()`.
        eigvec: 3x3 matrix whose columns are the eigenvectors.
        value_range: `(low, high)` of the input pixels; the offset is scaled
            by `high - low` (use `(0, 255)` for uint8-valued images).
        seed: integer seed.
        **kwargs: base layer keyword arguments.

    Examples:
        >>> layer = PCALighting(seed=1)
        >>> images = np.full((2, 4, 4, 3), 0.5, "float32")
        >>> shifted = layer(images)  # one constant RGB offset per image
    """

    def __init__(self, alpha_std=0.1, eigval=IMAGENET_EIGVAL, eigvec=IMAGENET_EIGVEC,
                 value_range=(0.0, 1.0), seed=None, **kwargs):
        super().__init__(**kwargs)
        if not alpha_std >= 0:
            raise ValueError(f"`alpha_std` must be >= 0. Received: alpha_std={alpha_std!r}")
        eigval_array = np.asarray(eigval, dtype="float32")
        eigvec_array = np.asarray(eigvec, dtype="float32")
        if eigval_array.shape != (3,):
            raise ValueError(f"`eigval` must hold 3 values. Received: eigval={eigval!r}")
        if eigvec_array.shape != (3, 3):
            raise ValueError(f"`eigvec` must be a 3x3 matrix. Received: eigvec={eigvec!r}")
        if len(value_range) != 2 or not value_range[0] < value_range[1]:
            raise ValueError(
                f"`value_range` must be (low, high) with low < high. "
                f"Received: value_range={value_range!r}"
            )
        self.alpha_std = float(alpha_std)
        self.eigval = eigval_array.tolist()
        self.eigvec = eigvec_array.tolist()
        self.value_range = tuple(float(value) for value in value_range)
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=True):
        if not training:
            return inputs
        backend = self.backend
        unbatched = len(inputs.shape) == 3
        images = backend.numpy.expand_dims(inputs, 0) if unbatched else inputs
        batch_size = backend.core.shape(images)[0]
        alpha = backend.random.normal(
            (batch_size, 3), stddev=self.alpha_std,
            seed=self._get_seed_generator(backend._backend),
        )
        scale = self.value_range[1] - self.value_range[0]
        # offset[n, c] = sum_i eigvec[c, i] * alpha[n, i] * eigval[i]
        weighted = alpha * backend.convert_to_tensor(self.eigval)
        offsets = backend.numpy.matmul(
            weighted, backend.numpy.transpose(backend.convert_to_tensor(self.eigvec))
        )
        offsets = backend.cast(offsets * scale, images.dtype)
        outputs = images + offsets[:, None, None, :]
        return outputs[0] if unbatched else outputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "alpha_std": self.alpha_std,
            "eigval": self.eigval,
            "eigvec": self.eigvec,
            "value_range": self.value_range,
            "seed": self.seed,
        }


def estimate_pca_lighting(images, max_pixels=1_000_000, seed=0):
    """Eigenvalues and eigenvectors of the RGB covariance of a sample of images.

    Args:
        images: an iterable of images or batches (arrays or tensors) with RGB
            as the last axis, values in [0, 255] (uint8) or [0, 1] (float);
            e.g. `source.train.take(1000).map(lambda image, label: image)`.
        max_pixels: pixels sampled at most, spread evenly over the images.
        seed: seed of the pixel sample.

    Returns:
        `(eigval, eigvec)`: eigenvalues of the covariance of all sampled pixels
        pooled, in decreasing order, on the [0, 1] scale whatever the input's
        (the scale of `IMAGENET_EIGVAL`), and a 3x3 matrix whose columns are
        the matching eigenvectors, ready for `PCALighting(eigval=...,
        eigvec=...)` and `TrainPreset(eigval=..., eigvec=...)`.
    """
    rng = np.random.default_rng(seed)
    samples = []
    for image in images:
        array = np.asarray(image)
        pixels = array.reshape(-1, 3).astype("float64")
        if array.dtype == np.uint8:
            pixels /= 255.0
        elif pixels.size and pixels.max() > 2:
            # Eigenvalues are variances: [0, 255] floats would give 65,025 times
            # stronger lighting than the same images as uint8.
            raise ValueError(
                "Float images must hold pixels on the [0, 1] scale (uint8 images are "
                f"scaled). Received values up to {pixels.max():g}"
            )
        samples.append(pixels[rng.choice(len(pixels), min(len(pixels), 4096), replace=False)])
    if not samples:
        raise ValueError("`images` is empty: PCA lighting needs at least one image.")
    pixels = np.concatenate(samples)
    if len(pixels) > max_pixels:
        pixels = pixels[rng.choice(len(pixels), max_pixels, replace=False)]
    eigval, eigvec = np.linalg.eigh(np.cov(pixels, rowvar=False))
    order = np.argsort(eigval)[::-1]
    return eigval[order], eigvec[:, order]
