"""Test helpers: gradients computed natively on the current backend, image folders."""

import keras
import numpy as np
from PIL import Image


def input_gradient(function, x, cotangent):
    """d/dx sum(function(x) * cotangent), computed natively on the current backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(function(x) * cotangent)
        return tape.gradient(loss, x).numpy()
    if backend == "jax":
        import jax

        return np.asarray(jax.grad(lambda v: (function(v) * cotangent).sum())(x))
    x = keras.ops.convert_to_tensor(x).requires_grad_(True)  # on Keras' device
    (function(x) * keras.ops.convert_to_tensor(cotangent)).sum().backward()
    return keras.ops.convert_to_numpy(x.grad)


def layer_gradients(layer, x, cotangent):
    """Gradients of sum(layer(x) * cotangent) with respect to `x` and to each of
    the layer's trainable weights, computed natively on the current backend."""
    weights = [np.asarray(keras.ops.convert_to_numpy(w)) for w in layer.trainable_weights]

    def loss(weight_values, v):
        outputs, _ = layer.stateless_call(weight_values, [], v)
        return keras.ops.sum(keras.ops.multiply(outputs, cotangent))

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tensors = [tf.constant(value) for value in [x, *weights]]
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            value = loss(tensors[1:], tensors[0])
        return [g.numpy() for g in tape.gradient(value, tensors)]
    if backend == "jax":
        import jax

        weight_grads, x_grad = jax.grad(loss, argnums=(0, 1))(weights, x)
        return [np.asarray(x_grad), *[np.asarray(g) for g in weight_grads]]
    tensors = [keras.ops.convert_to_tensor(value).requires_grad_(True)
               for value in [x, *weights]]
    loss(tensors[1:], tensors[0]).backward()
    return [keras.ops.convert_to_numpy(t.grad) for t in tensors]


def write_colour_folder(root, colours, count, seed=0):
    """`count` 80x80 JPEGs per class in `root/<name>/`, for `{name: (r, g, b)}`.

    Classes told apart by colour, with noise and a random blob in each image.
    """
    rng = np.random.default_rng(seed)
    for name, colour in colours.items():
        (root / name).mkdir(parents=True)
        for index in range(count):
            pixels = np.array(colour, float) + rng.normal(0, 30, (80, 80, 3))
            top, left = rng.integers(0, 60, 2)
            pixels[top:top + 20, left:left + 20] = rng.uniform(0, 255, 3)
            image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            image.save(root / name / f"{index}.jpg")
    return root
