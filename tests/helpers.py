"""Test helpers: gradients computed natively on the current backend."""

import keras
import numpy as np


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
    import torch

    x = torch.tensor(x, requires_grad=True)
    (function(x) * torch.tensor(cotangent)).sum().backward()
    return x.grad.numpy()
