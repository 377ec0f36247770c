import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import torch
from keras.src import testing

from keras_alexnet.layers import GroupedConv2D
from tests.helpers import layer_gradients


def _grouped_pair(implementation, filters=8, kernel_size=3, groups=2, **kwargs):
    grouped = GroupedConv2D(filters, kernel_size, groups=groups,
                            implementation=implementation, **kwargs)
    reference = keras.layers.Conv2D(filters, kernel_size, groups=groups, **kwargs)
    return grouped, reference


class GroupedConv2DTest(testing.TestCase):
    def test_run_layer_test(self):
        for implementation in ("split", "native", "auto"):
            self.run_layer_test(
                GroupedConv2D,
                init_kwargs={"filters": 6, "kernel_size": 3, "groups": 2,
                             "padding": "same", "implementation": implementation},
                input_shape=(2, 5, 5, 4),
                expected_output_shape=(2, 5, 5, 6),
                expected_num_trainable_weights=2,
            )

    def test_kernel_layout_is_conv2d_groups(self):
        layer = GroupedConv2D(256, 5, groups=2, padding="same")
        layer.build((None, 27, 27, 96))
        self.assertEqual(tuple(layer.kernel.shape), (5, 5, 48, 256))

    def test_matches_keras_conv2d_groups(self):
        x = np.random.default_rng(0).normal(size=(2, 9, 9, 6)).astype("float32")
        for implementation in ("split", "native"):
            for groups, strides, padding in [(2, 1, "same"), (3, 2, "valid")]:
                grouped, reference = _grouped_pair(
                    implementation, filters=12, groups=groups, strides=strides,
                    padding=padding,
                )
                reference.build(x.shape)
                grouped.build(x.shape)
                grouped.set_weights(reference.get_weights())
                self.assertAllClose(grouped(x), reference(x), rtol=1e-5, atol=1e-5)

    def test_value_and_gradients_match_keras_conv2d(self):
        # Covers every path of every backend: on torch, "native" and "auto" run
        # the channels-last kernel, except "same" padding with strides > 1.
        rng = np.random.default_rng(3)
        x = rng.normal(size=(2, 11, 11, 6)).astype("float32")
        cases = [
            dict(groups=1, kernel_size=3, strides=1, padding="same"),
            dict(groups=2, kernel_size=5, strides=1, padding="same"),
            dict(groups=2, kernel_size=4, strides=1, padding="same"),  # odd pad after
            dict(groups=3, kernel_size=3, strides=2, padding="same"),
            dict(groups=1, kernel_size=5, strides=4, padding="valid"),
            dict(groups=2, kernel_size=3, strides=1, padding="same", dilation_rate=2),
        ]
        for implementation in ("native", "split", "auto"):
            for case in cases:
                grouped, reference = _grouped_pair(
                    implementation, filters=6, activation="relu", **case
                )
                reference.build(x.shape)
                grouped.build(x.shape)
                grouped.set_weights(
                    [rng.normal(size=w.shape).astype("float32")
                     for w in reference.get_weights()]
                )
                reference.set_weights(grouped.get_weights())
                expected = reference(x)
                cotangent = rng.normal(size=expected.shape).astype("float32")
                self.assertAllClose(grouped(x), expected, rtol=1e-5, atol=1e-5)
                for gradient, expected_gradient in zip(
                    layer_gradients(grouped, x, cotangent),
                    layer_gradients(reference, x, cotangent),
                ):
                    self.assertAllClose(gradient, expected_gradient, rtol=1e-4, atol=1e-4)

    def test_matches_torch_conv2d_groups(self):
        rng = np.random.default_rng(1)
        x = rng.normal(size=(2, 13, 13, 8)).astype("float32")
        layer = GroupedConv2D(10, 3, groups=2, padding="same")
        layer.build(x.shape)
        kernel = rng.normal(size=(3, 3, 4, 10)).astype("float32")
        bias = rng.normal(size=(10,)).astype("float32")
        layer.set_weights([kernel, bias])
        expected = torch.nn.functional.conv2d(
            torch.tensor(x).permute(0, 3, 1, 2),
            torch.tensor(kernel).permute(3, 2, 0, 1),
            torch.tensor(bias),
            padding=1,
            groups=2,
        ).permute(0, 2, 3, 1)
        self.assertAllClose(layer(x), expected.numpy(), rtol=1e-5, atol=1e-5)

    def test_output_group_sees_only_its_input_group(self):
        # Perturbing input group 1 leaves output group 0 unchanged.
        x = np.random.default_rng(2).normal(size=(1, 6, 6, 4)).astype("float32")
        layer = GroupedConv2D(6, 3, groups=2, padding="same", implementation="split")
        before = keras.ops.convert_to_numpy(layer(x))
        x[..., 2:] += 1.0
        after = keras.ops.convert_to_numpy(layer(x))
        np.testing.assert_array_equal(before[..., :3], after[..., :3])
        self.assertFalse(np.allclose(before[..., 3:], after[..., 3:]))

    def test_invalid_implementation(self):
        with self.assertRaisesRegex(ValueError, "implementation='fast'"):
            GroupedConv2D(4, 3, groups=2, implementation="fast")

    def test_config_round_trip(self):
        layer = GroupedConv2D(4, 3, groups=2, implementation="split", name="g")
        restored = GroupedConv2D.from_config(layer.get_config())
        self.assertEqual(restored.implementation, "split")
        self.assertEqual(restored.groups, 2)


@pytest.mark.skipif(keras.backend.backend() != "jax",
                    reason="filters split over devices by keras.distribution: JAX only")
def test_filters_split_over_devices_match_keras_conv2d():
    # Four fake devices need XLA_FLAGS before JAX starts: a subprocess.
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-m", "tests.sharded_grouped_conv2d"], cwd=root,
        env={**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(root),
             "XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
