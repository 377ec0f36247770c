import keras
import numpy as np
import pytest
import tensorflow as tf
import torch
from keras import ops
from keras.src import testing

from keras_alexnet.layers import LocalResponseNormalization
from tests.helpers import input_gradient


def numpy_lrn(x, size, alpha, beta, k, axis=-1):
    """The paper's formula, written as the loop over channels it describes."""
    x = np.moveaxis(x.astype(np.float64), axis, -1)
    channels = x.shape[-1]
    out = np.empty_like(x)
    for c in range(channels):
        low, high = max(0, c - size // 2), min(channels - 1, c + size // 2)
        total = np.sum(x[..., low : high + 1] ** 2, axis=-1)
        out[..., c] = x[..., c] / (k + alpha * total) ** beta
    return np.moveaxis(out, -1, axis)


def random_activations(shape, seed=0):
    # Large post-ReLU-like values so the alpha term matters (alpha * sum ~ k).
    return np.random.default_rng(seed).uniform(0, 60, shape).astype("float32")


class LocalResponseNormalizationTest(testing.TestCase):
    def test_run_layer_test(self):
        self.run_layer_test(
            LocalResponseNormalization,
            init_kwargs={"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0},
            input_shape=(2, 4, 4, 7),
            expected_output_shape=(2, 4, 4, 7),
            expected_num_trainable_weights=0,
            expected_num_non_trainable_weights=0,
            supports_masking=True,
        )

    def test_channels_first_run_layer_test(self):
        self.run_layer_test(
            LocalResponseNormalization,
            init_kwargs={"size": 3, "axis": 1},
            input_shape=(2, 6, 3, 3),
            expected_output_shape=(2, 6, 3, 3),
            supports_masking=True,
        )

    def test_matches_numpy_formula(self):
        for shape, size, axis in [((2, 5, 5, 12), 5, -1), ((2, 9, 4, 4), 3, 1),
                                  ((3, 4), 7, -1), ((2, 3, 3, 2), 5, -1)]:
            x = random_activations(shape)
            layer = LocalResponseNormalization(size=size, alpha=3e-4, beta=0.6, k=1.5, axis=axis)
            expected = numpy_lrn(x, size, 3e-4, 0.6, 1.5, axis=axis)
            self.assertAllClose(layer(x), expected, rtol=1e-5, atol=1e-6)

    def test_every_odd_size_and_implementation_matches_numpy(self):
        x = random_activations((2, 3, 3, 10), seed=5)
        cotangent = np.random.default_rng(6).normal(size=x.shape).astype("float32")
        for size in (1, 3, 5, 7, 9):
            expected = numpy_lrn(x, size, 2e-3, 0.75, 1.0)
            for implementation in ("ops", "native", "auto"):
                layer = LocalResponseNormalization(size=size, alpha=2e-3, beta=0.75, k=1.0,
                                                   implementation=implementation)
                self.assertAllClose(layer(x), expected, rtol=1e-5, atol=1e-6,
                                    msg=f"size={size}, implementation={implementation}")
                reference = LocalResponseNormalization(size=size, alpha=2e-3, beta=0.75,
                                                       k=1.0, implementation="ops")
                self.assertAllClose(input_gradient(layer, x, cotangent),
                                    input_gradient(reference, x, cotangent),
                                    rtol=1e-4, atol=1e-5,
                                    msg=f"gradient, size={size}, {implementation}")

    def test_matches_tf_nn_value_and_gradient(self):
        x = random_activations((2, 7, 7, 16), seed=1)
        cotangent = np.random.default_rng(2).normal(size=x.shape).astype("float32")
        layer = LocalResponseNormalization()  # the paper's: n=5, k=2, alpha=1e-4, beta=0.75

        def reference(v):
            return tf.nn.local_response_normalization(v, 2, 2.0, 1e-4, 0.75)

        self.assertAllClose(layer(x), reference(x), rtol=1e-5, atol=1e-6)
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            loss = tf.reduce_sum(reference(xt) * cotangent)
        expected_gradient = tape.gradient(loss, xt).numpy()
        gradient = input_gradient(layer, x, cotangent)
        self.assertAllClose(gradient, expected_gradient, rtol=1e-5, atol=1e-6)

    def test_matches_torch_value_and_gradient(self):
        # torch divides alpha by size: the paper's alpha=1e-4 is torch's 5e-4.
        x = random_activations((2, 6, 6, 10), seed=3)
        cotangent = np.random.default_rng(4).normal(size=x.shape).astype("float32")
        layer = LocalResponseNormalization(size=5, alpha=1e-4, beta=0.75, k=2.0)
        torch_layer = torch.nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)
        xt = torch.tensor(x).permute(0, 3, 1, 2).requires_grad_(True)
        expected = torch_layer(xt)
        (expected * torch.tensor(cotangent).permute(0, 3, 1, 2)).sum().backward()
        self.assertAllClose(
            layer(x), expected.detach().permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-6
        )
        gradient = input_gradient(layer, x, cotangent)
        self.assertAllClose(
            gradient, xt.grad.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-6
        )

    def test_implementations_agree_in_value_and_gradient(self):
        # "native" exists on TensorFlow (channels-last only), torch and JAX (any axis).
        backend = keras.backend.backend()
        cases = [((2, 6, 6, 10), -1), ((2, 9, 4, 4), 1), ((3, 12), -1)]
        for shape, axis in cases:
            native_exists = backend in ("torch", "jax") or (backend == "tensorflow" and len(shape) == 4
                                                   and axis == -1)
            if not native_exists:
                continue
            x = random_activations(shape, seed=7)
            cotangent = np.random.default_rng(8).normal(size=shape).astype("float32")
            native = LocalResponseNormalization(size=3, beta=0.6, axis=axis,
                                                implementation="native")
            formula = LocalResponseNormalization(size=3, beta=0.6, axis=axis,
                                                 implementation="ops")
            self.assertAllClose(native(x), numpy_lrn(x, 3, 1e-4, 0.6, 2.0, axis=axis),
                                rtol=1e-5, atol=1e-6)
            self.assertAllClose(input_gradient(native, x, cotangent),
                                input_gradient(formula, x, cotangent), rtol=1e-5, atol=1e-6)

    def test_torch_kernel_passes_gradcheck(self):
        # The hand-derived backward pass against finite differences, in float64.
        from keras_alexnet.layers import _torch_kernels

        x = torch.tensor(random_activations((2, 3, 2, 7), seed=9), dtype=torch.float64)
        for axis, size in [(-1, 5), (1, 3)]:
            self.assertTrue(torch.autograd.gradcheck(
                lambda v: _torch_kernels.local_response_norm(v, axis, size, 3e-3, 0.75, 2.0),
                (x.clone().requires_grad_(True),),
            ))

    def test_bvlc_alexnet_convention(self):
        # Caffe's k=1, alpha=1e-4 divided by 5 is TF's (2, 1.0, 2e-5, 0.75).
        x = random_activations((1, 3, 3, 9), seed=5)
        layer = LocalResponseNormalization(size=5, alpha=2e-5, beta=0.75, k=1.0)
        expected = tf.nn.local_response_normalization(x, 2, 1.0, 2e-5, 0.75)
        self.assertAllClose(layer(x), expected, rtol=1e-5, atol=1e-6)

    def test_mixed_precision_computes_in_float32(self):
        x = random_activations((2, 5, 5, 8), seed=6)
        layer = LocalResponseNormalization(dtype="mixed_bfloat16")
        outputs = layer(x)
        self.assertEqual(keras.backend.standardize_dtype(outputs.dtype), "bfloat16")
        expected = numpy_lrn(x.astype("float32"), 5, 1e-4, 0.75, 2.0)
        # bfloat16 keeps 8 bits of mantissa: relative error below 2**-8.
        self.assertAllClose(ops.cast(outputs, "float32"), expected, rtol=2**-7, atol=1e-2)

    def test_config_round_trip(self):
        layer = LocalResponseNormalization(size=3, alpha=2e-4, beta=0.5, k=1.0, axis=1)
        restored = LocalResponseNormalization.from_config(layer.get_config())
        for key in ("size", "alpha", "beta", "k", "axis"):
            self.assertEqual(getattr(restored, key), getattr(layer, key))

    def test_invalid_arguments(self):
        for kwargs, message in [
            ({"size": 4}, "size=4"), ({"size": 0}, "size=0"), ({"size": 2.5}, "size=2.5"),
            ({"alpha": 0}, "alpha=0"), ({"beta": -1}, "beta=-1"), ({"k": -1}, "k=-1"),
            ({"axis": "last"}, "axis='last'"),
        ]:
            with self.assertRaisesRegex(ValueError, message):
                LocalResponseNormalization(**kwargs)

    def test_axis_out_of_range(self):
        with pytest.raises(ValueError, match="axis"):
            LocalResponseNormalization(axis=4)(np.ones((1, 2, 2, 3), "float32"))
