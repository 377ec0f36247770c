import keras
import numpy as np
from keras.src import testing

from keras_alexnet.layers import MaxPooling2D
from tests.helpers import input_gradient


def numpy_max_pool(x, size, stride):
    """Valid max pooling of a channels-last batch, window by window."""
    rows = (x.shape[1] - size) // stride + 1
    cols = (x.shape[2] - size) // stride + 1
    out = np.empty((x.shape[0], rows, cols, x.shape[3]), x.dtype)
    for i in range(rows):
        for j in range(cols):
            window = x[:, i * stride : i * stride + size, j * stride : j * stride + size]
            out[:, i, j] = window.max(axis=(1, 2))
    return out


class MaxPooling2DTest(testing.TestCase):
    def test_run_layer_test(self):
        self.run_layer_test(
            MaxPooling2D,
            init_kwargs={"pool_size": 3, "strides": 2},
            input_shape=(2, 7, 7, 5),
            expected_output_shape=(2, 3, 3, 5),
            expected_num_trainable_weights=0,
        )

    def test_overlapping_pooling_matches_numpy(self):
        # AlexNet's pool1 geometry on a small batch: 55x55 -> 27x27.
        x = np.random.default_rng(0).normal(size=(2, 55, 55, 4)).astype("float32")
        self.assertAllClose(MaxPooling2D(3, strides=2)(x), numpy_max_pool(x, 3, 2))

    def test_value_and_gradient_match_keras_max_pooling(self):
        # Continuous random inputs: no ties, so the gradient is unique.
        rng = np.random.default_rng(1)
        x = rng.normal(size=(2, 13, 13, 6)).astype("float32")
        for kwargs in [dict(pool_size=3, strides=2), dict(pool_size=2),
                       dict(pool_size=3, strides=2, padding="same"),
                       dict(pool_size=3, strides=1, data_format="channels_first")]:
            layer = MaxPooling2D(**kwargs)
            reference = keras.layers.MaxPooling2D(**kwargs)
            expected = reference(x)
            cotangent = rng.normal(size=expected.shape).astype("float32")
            self.assertAllClose(layer(x), expected)
            self.assertAllClose(
                input_gradient(layer, x, cotangent), input_gradient(reference, x, cotangent)
            )

    def test_ties_route_the_gradient_as_keras_does(self):
        # After a ReLU most windows hold several equal maxima (zeros): each
        # window's gradient must go to the same input as in Keras' pooling.
        rng = np.random.default_rng(2)
        x = np.maximum(rng.normal(size=(2, 11, 11, 3)), 0).round(1).astype("float32")
        layer = MaxPooling2D(3, strides=2)
        reference = keras.layers.MaxPooling2D(3, strides=2)
        cotangent = rng.normal(size=(2, 5, 5, 3)).astype("float32")
        self.assertAllClose(
            input_gradient(layer, x, cotangent), input_gradient(reference, x, cotangent)
        )

    def test_config_round_trip(self):
        layer = MaxPooling2D(3, strides=2, name="pool1")
        restored = MaxPooling2D.from_config(layer.get_config())
        self.assertIsInstance(restored, MaxPooling2D)
        self.assertEqual(restored.pool_size, (3, 3))
        self.assertEqual(restored.strides, (2, 2))
