"""JAX paths for AlexNet's convolution and LRN layers: hand-written gradients.

XLA:CPU compiles the gradient of a convolution with respect to its kernel
into a convolution over the batch that runs far below the machine's peak:
for AlexNet's conv2 (one group, batch 64) it takes 1.2 s against 0.3 s for
the same numbers computed as one matrix product of the input's patches
(im2col) with the output gradient. And the gradient XLA derives for the
`keras.ops` LRN formula makes three times as many passes over the
activations as the closed form, and its gradient of max pooling
(select-and-scatter) is 3x slower than routing the upstream gradient through
one comparison per window offset. The functions here are `jax.custom_vjp`s
whose forward passes are XLA's own and whose backward passes are those
cheaper forms; they compute the same values (tested against XLA's own
gradients and finite differences). Only the layers in this package call
them, only on the JAX backend, and (but for the LRN gradient) only when JAX
computes on the CPU: on a GPU, XLA's convolutions are cuDNN's.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def computes_on_cpu():
    """Whether JAX runs on the CPU, where XLA's own gradients measured slow."""
    return jax.default_backend() == "cpu"


def _convolve(x, kernel, strides, padding):
    return lax.conv_general_dilated(
        x, kernel, strides, padding, dimension_numbers=_DIMENSION_NUMBERS
    )


def _patches(x, kernel_shape, strides, padding):
    """im2col: `(N * out_h * out_w, kh * kw * C)` rows, ordered as the rows of
    the kernel reshaped to `(kh * kw * C, filters)`."""
    kernel_h, kernel_w = kernel_shape[:2]
    x = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    out_h = (x.shape[1] - kernel_h) // strides[0] + 1
    out_w = (x.shape[2] - kernel_w) // strides[1] + 1
    columns = [
        x[:, i : i + strides[0] * (out_h - 1) + 1 : strides[0],
             j : j + strides[1] * (out_w - 1) + 1 : strides[1], :]
        for i in range(kernel_h)
        for j in range(kernel_w)
    ]
    return jnp.concatenate(columns, axis=-1).reshape(-1, kernel_h * kernel_w * x.shape[3])


def conv2d(x, kernel, strides, padding):
    """Channels-last, single-group convolution with Keras' `"valid"` or
    `"same"` padding (lax's own, as Keras' JAX backend pads: the odd pixel
    after). The kernel gradient is an im2col matrix product."""
    pads = lax.padtype_to_pads(x.shape[1:3], kernel.shape[:2], strides, padding.upper())
    return _conv2d(x, kernel, tuple(strides), tuple(pads))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv2d(x, kernel, strides, padding):
    """`conv2d` with `padding` as a pair of `(before, after)` pairs."""
    return _convolve(x, kernel, strides, padding)


def _conv2d_forward(x, kernel, strides, padding):
    return _convolve(x, kernel, strides, padding), (x, kernel)


def _conv2d_backward(strides, padding, residuals, upstream):
    x, kernel = residuals
    # The input gradient is XLA's own transposed convolution; linear_transpose
    # derives it without evaluating the forward convolution again. Under jit
    # it is dropped when nothing uses it (conv1's input is the image).
    (input_gradient,) = jax.linear_transpose(
        lambda v: _convolve(v, kernel, strides, padding), x
    )(upstream)
    patches = _patches(x, kernel.shape, strides, padding)
    kernel_gradient = patches.T @ upstream.reshape(-1, kernel.shape[-1])
    return input_gradient, kernel_gradient.reshape(kernel.shape)


_conv2d.defvjp(_conv2d_forward, _conv2d_backward)


def _max_pool(x, pool_size, strides):
    return lax.reduce_window(
        x, -jnp.inf, lax.max, (1, *pool_size, 1), (1, *strides, 1), "VALID"
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def max_pool2d(x, pool_size, strides):
    """Channels-last max pooling with `"valid"` padding."""
    return _max_pool(x, pool_size, strides)


def _max_pool_forward(x, pool_size, strides):
    outputs = _max_pool(x, pool_size, strides)
    return outputs, (x, outputs)


def _max_pool_backward(pool_size, strides, residuals, upstream):
    # Each window's gradient goes to its first maximum in row-major window
    # order, as XLA's select-and-scatter does: visit the window offsets in
    # that order, give the gradient to inputs equal to the maximum that no
    # earlier offset has claimed, and scatter it back with a strided pad.
    x, outputs = residuals
    batch, height, width, channels = x.shape
    out_h, out_w = outputs.shape[1:3]
    zero = jnp.zeros((), x.dtype)
    claimed = jnp.zeros(outputs.shape, bool)
    gradient = jnp.zeros_like(x)
    for i in range(pool_size[0]):
        for j in range(pool_size[1]):
            last_row = i + strides[0] * (out_h - 1)
            last_col = j + strides[1] * (out_w - 1)
            candidates = lax.slice(
                x, (0, i, j, 0), (batch, last_row + 1, last_col + 1, channels),
                (1, strides[0], strides[1], 1),
            )
            hit = (candidates == outputs) & ~claimed
            claimed = claimed | hit
            gradient = gradient + lax.pad(
                jnp.where(hit, upstream, zero), zero,
                ((0, 0, 0), (i, height - 1 - last_row, strides[0] - 1),
                 (j, width - 1 - last_col, strides[1] - 1), (0, 0, 0)),
            )
    return (gradient,)


max_pool2d.defvjp(_max_pool_forward, _max_pool_backward)


def _window_sums(v, size):
    """Sums of `size` consecutive channels (last axis), zero beyond the ends."""
    radius = size // 2
    channels = v.shape[-1]
    padded = jnp.pad(v, [(0, 0)] * (v.ndim - 1) + [(radius, radius)])
    return sum(padded[..., offset : offset + channels] for offset in range(size))


def _lrn_denominator_base(x, size, alpha, k):
    return k + alpha * _window_sums(x * x, size)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _local_response_norm(x, size, alpha, beta, k):
    return x * _lrn_denominator_base(x, size, alpha, k) ** -beta


def _lrn_forward(x, size, alpha, beta, k):
    t = _lrn_denominator_base(x, size, alpha, k)
    return x * t**-beta, (x, t)


def _lrn_backward(size, alpha, beta, k, residuals, upstream):
    # dx_i = g_i t_i^-beta - 2 alpha beta x_i sum_{c in W(i)} g_c x_c t_c^(-beta-1)
    # (the derivation is in keras_alexnet/layers/_torch_kernels.py).
    x, t = residuals
    scaled = upstream * t**-beta
    cross_terms = _window_sums(scaled * x / t, size)
    return (scaled - (2.0 * alpha * beta) * x * cross_terms,)


_local_response_norm.defvjp(_lrn_forward, _lrn_backward)


def local_response_norm(x, axis, size, alpha, beta, k):
    """The paper's LRN (alpha not divided by `size`) along `axis` of `x`."""
    channels_last = jnp.moveaxis(x, axis, -1)
    outputs = _local_response_norm(channels_last, size, alpha, beta, k)
    return jnp.moveaxis(outputs, -1, axis)


def filter_split_conv2d(inputs, kernel, convolve, mesh, batch_axis, filter_axis,
                        split_inputs, devices_per_group=None):
    """`convolve(inputs, kernel)` run by each device on its own shard.

    The kernel (channels-last, `(kh, kw, in / groups, filters)`) is split on
    its filters over `mesh`'s `filter_axis` and the batch over `batch_axis`
    (None: not split); the output is split like the filters. With
    `split_inputs` the input channels arrive split over `filter_axis` too.
    `devices_per_group=None` means each device holds whole groups, and its
    input channels are exactly its groups': no communication. Otherwise
    each device gathers the input channels (an all-gather, whose gradient is
    a reduce-scatter) and convolves those of the group it holds filters of.
    """
    channels_split = PartitionSpec(batch_axis, None, None, filter_axis)

    def per_device(x, k):
        if devices_per_group is not None:
            if split_inputs:
                x = lax.all_gather(x, filter_axis, axis=3, tiled=True)
            group_channels = k.shape[2]
            if group_channels != x.shape[3]:
                group = lax.axis_index(filter_axis) // devices_per_group
                x = lax.dynamic_slice_in_dim(x, group * group_channels, group_channels, 3)
        if batch_axis is not None:
            # Each device's kernel gradient covers its part of the batch;
            # marking the kernel as varying over the batch axis makes the
            # gradient sum them (a psum), also through `conv2d`'s own rule.
            k = lax.pcast(k, batch_axis, to="varying")
        return convolve(x, k)

    return jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(
            channels_split if split_inputs else PartitionSpec(batch_axis, None, None, None),
            PartitionSpec(None, None, None, filter_axis),
        ),
        out_specs=channels_split,
    )(inputs, kernel)
