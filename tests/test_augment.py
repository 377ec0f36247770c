import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src import testing

from keras_alexnet.augment import (IMAGENET_EIGVAL, IMAGENET_EIGVEC, PCALighting,
                                   estimate_pca_lighting)

EIGVAL = np.array(IMAGENET_EIGVAL)
EIGVEC = np.array(IMAGENET_EIGVEC)


def _offsets(layer, images, **kwargs):
    outputs = keras.ops.convert_to_numpy(layer(images, **kwargs))
    return outputs - images


class PCALightingTest(testing.TestCase):
    def test_run_layer_test(self):
        self.run_layer_test(
            PCALighting,
            init_kwargs={"alpha_std": 0.1, "seed": 1},
            input_shape=(2, 4, 4, 3),
            expected_output_shape=(2, 4, 4, 3),
            expected_num_seed_generators=1,
            run_training_check=False,
        )

    def test_offset_is_one_constant_per_image(self):
        images = np.random.default_rng(0).uniform(0, 1, (4, 5, 6, 3)).astype("float32")
        offsets = _offsets(PCALighting(seed=3), images)
        np.testing.assert_allclose(offsets, offsets[:, :1, :1, :].repeat(5, 1).repeat(6, 2),
                                   atol=1e-6)
        assert not np.allclose(offsets[0, 0, 0], offsets[1, 0, 0])

    def test_projection_std_is_alpha_std_times_eigval(self):
        images = np.zeros((20_000, 1, 1, 3), "float32")
        offsets = _offsets(PCALighting(alpha_std=0.1, seed=4), images)[:, 0, 0, :]
        projections = offsets @ EIGVEC  # eigenvectors are (nearly) orthonormal
        np.testing.assert_allclose(projections.std(axis=0), 0.1 * EIGVAL, rtol=0.05)
        assert np.all(np.abs(projections.mean(axis=0)) < 0.05 * 0.1 * EIGVAL)

    def test_single_image_and_value_range(self):
        image = np.zeros((3, 3, 3), "float32")
        small = _offsets(PCALighting(seed=5), image)
        large = _offsets(PCALighting(seed=5, value_range=(0, 255)), image)
        assert small.shape == (3, 3, 3)
        np.testing.assert_allclose(large, 255 * small, rtol=1e-4, atol=1e-4)

    def test_seeded_layers_repeat_and_inference_is_identity(self):
        images = np.random.default_rng(1).uniform(0, 1, (3, 4, 4, 3)).astype("float32")
        first = _offsets(PCALighting(seed=9), images)
        second = _offsets(PCALighting(seed=9), images)
        np.testing.assert_array_equal(first, second)
        np.testing.assert_array_equal(_offsets(PCALighting(seed=9), images, training=False), 0)

    def test_inside_tf_data_map(self):
        images = np.random.default_rng(2).uniform(0, 1, (8, 4, 4, 3)).astype("float32")

        def run():
            layer = PCALighting(seed=11)
            dataset = tf.data.Dataset.from_tensor_slices(images).batch(4).map(layer)
            return np.concatenate([batch.numpy() for batch in dataset])

        first = run()
        offsets = first - images
        np.testing.assert_allclose(offsets, offsets[:, :1, :1, :].repeat(4, 1).repeat(4, 2),
                                   atol=1e-6)
        assert np.abs(offsets).max() > 1e-4
        np.testing.assert_array_equal(first, run())

    def test_inside_a_model(self):
        model = keras.Sequential([keras.Input((4, 4, 3)), PCALighting(seed=2)])
        images = np.zeros((2, 4, 4, 3), "float32")
        assert np.abs(keras.ops.convert_to_numpy(model(images, training=True))).max() > 0
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(model(images, training=False)), images)

    def test_invalid_arguments(self):
        for kwargs, message in [({"alpha_std": -1}, "alpha_std=-1"),
                                ({"eigval": (1, 2)}, "eigval"),
                                ({"eigvec": np.eye(2)}, "eigvec"),
                                ({"value_range": (1, 0)}, "value_range")]:
            with self.assertRaisesRegex(ValueError, message):
                PCALighting(**kwargs)


@pytest.mark.backend_independent
def test_estimate_pca_lighting_recovers_a_known_covariance():
    rng = np.random.default_rng(0)
    covariance = EIGVEC @ np.diag(EIGVAL) @ EIGVEC.T
    pixels = rng.multivariate_normal([0.5, 0.5, 0.5], covariance, size=(50, 40, 40))
    eigval, eigvec = estimate_pca_lighting(pixels.astype("float32"))
    np.testing.assert_allclose(eigval, EIGVAL, rtol=0.05, atol=5e-4)
    for column in range(2):  # the two large components are well separated
        cosine = abs(eigvec[:, column] @ EIGVEC[:, column]) / np.linalg.norm(EIGVEC[:, column])
        assert cosine > 0.99


@pytest.mark.backend_independent
def test_estimate_pca_lighting_pools_pixels_of_all_images_in_the_unit_range():
    """The ImageNet eigenvalues are of the covariance of all pixels pooled (their sum,
    0.2408, is ImageNet's global pixel variance), not of per-image statistics: images of
    one flat colour each have no variance within an image but still give the
    covariance of their colours. uint8 pixels are measured on the [0, 1] scale."""
    rng = np.random.default_rng(1)
    covariance = EIGVEC @ np.diag(EIGVAL) @ EIGVEC.T
    colours = np.clip(rng.multivariate_normal([0.5, 0.5, 0.5], covariance / 16, size=400),
                      0, 1)
    flat = np.broadcast_to(colours[:, None, None, :], (400, 8, 8, 3))
    eigval, _ = estimate_pca_lighting(np.round(flat * 255).astype(np.uint8))
    expected = np.linalg.eigvalsh(np.cov(colours, rowvar=False))[::-1]
    np.testing.assert_allclose(eigval, expected, rtol=0.02, atol=2e-5)


@pytest.mark.backend_independent
def test_estimate_pca_lighting_refuses_floats_outside_the_unit_range():
    images = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3))
    with pytest.raises(ValueError, match=r"\[0, 1\] scale.*Received values up to 2"):
        estimate_pca_lighting(images)
    eigval, _ = estimate_pca_lighting(images.astype(np.uint8))
    np.testing.assert_array_less(eigval, 1.0)


@pytest.mark.backend_independent
def test_estimate_pca_lighting_needs_images():
    with pytest.raises(ValueError, match="empty"):
        estimate_pca_lighting([])
