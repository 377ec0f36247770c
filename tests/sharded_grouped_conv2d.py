"""GroupedConv2D with its filters split over devices equals Keras' Conv2D on one.

    KERAS_BACKEND=jax XLA_FLAGS=--xla_force_host_platform_device_count=4 \\
        python -m tests.sharded_grouped_conv2d

Needs 4 (fake) devices, so tests/test_grouped_conv2d.py runs it in a
subprocess. For every way a model axis can meet the groups (whole groups
per device, a group over several devices, one group with split or whole
input channels), the value and the input and kernel gradients of a
`GroupedConv2D` built under a `ModelParallel` distribution must match
`keras.layers.Conv2D(groups=...)` computed without any distribution.
"""

import jax
import keras
import numpy as np

from keras_alexnet.layers import GroupedConv2D

# (groups, model-axis size, input channels, filters)
CASES = [(2, 2, 8, 12), (2, 4, 8, 16), (4, 2, 8, 8), (1, 2, 8, 6), (1, 4, 3, 8)]


def _value_and_gradients(layer, x, cotangent):
    weights = [variable.value for variable in layer.trainable_variables]

    def loss(weights, x):
        outputs, _ = layer.stateless_call(weights, [], x)
        return keras.ops.sum(outputs * cotangent), outputs

    (_, outputs), (weight_grads, x_grad) = jax.jit(
        jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(weights, x)
    return [np.asarray(value) for value in (outputs, x_grad, weight_grads[0])]


def main():
    rng = np.random.default_rng(0)
    devices = keras.distribution.list_devices()
    for groups, model_devices, channels, filters in CASES:
        x = rng.normal(size=(4, 7, 7, channels)).astype("float32")
        cotangent = rng.normal(size=(4, 7, 7, filters)).astype("float32")
        reference = keras.layers.Conv2D(filters, 3, padding="same", groups=groups)
        reference.build(x.shape)
        mesh = keras.distribution.DeviceMesh(
            (len(devices) // model_devices, model_devices), ("batch", "model"), devices)
        layout_map = keras.distribution.LayoutMap(mesh)
        layout_map[".*kernel"] = (None, None, None, "model")
        layout_map[".*bias"] = ("model",)
        with keras.distribution.ModelParallel(layout_map=layout_map,
                                              batch_dim_name="batch").scope():
            layer = GroupedConv2D(filters, 3, padding="same", groups=groups)
            layer.build(x.shape)
            layer.set_weights(reference.get_weights())
            assert layer._filter_split_layout() is not None, "not the per-device path"
            found = _value_and_gradients(layer, x, cotangent)
        expected = _value_and_gradients(reference, x, cotangent)
        for name, value, target in zip(("output", "input gradient", "kernel gradient"),
                                       found, expected):
            np.testing.assert_allclose(
                value, target, rtol=1e-5, atol=1e-5,
                err_msg=f"{name}, groups={groups}, model axis {model_devices}")
    print(f"{len(CASES)} cases match")


if __name__ == "__main__":
    main()
