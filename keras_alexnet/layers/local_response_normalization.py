"""Local response normalisation across channels, as in AlexNet (paper §3.3)."""

import keras
from keras import ops

IMPLEMENTATIONS = ("auto", "ops", "native")


@keras.saving.register_keras_serializable(package="keras_alexnet")
class LocalResponseNormalization(keras.layers.Layer):
    """Local response normalisation across channels (Krizhevsky et al. 2012).

    Computes, for every position and channel `c` of `N` channels,

        b[c] = a[c] / (k + alpha * sum_{j=max(0, c-size//2)}^{min(N-1, c+size//2)} a[j]**2)**beta

    exactly as written in the paper: the sum of squares is **not** divided
    by `size`. Caffe and `torch.nn.LocalResponseNorm` divide `alpha` by `size`;
    `tf.nn.local_response_normalization` does not. So this layer equals
    `tf.nn.local_response_normalization(x, size // 2, k, alpha, beta)` and
    `torch.nn.LocalResponseNorm(size, alpha * size, beta, k)`.

    `implementation="ops"` writes the maths with `keras.ops`, so it runs under
    `jit` on every backend. `"native"` calls a backend-specific kernel:
    `tf.nn.local_response_normalization` for 4-D channels-last inputs on
    TensorFlow; on PyTorch an autograd function with a hand-derived backward
    pass that works in place (`keras_alexnet.layers._torch_kernels`); on JAX
    a `jax.custom_vjp` with the same closed-form gradient, which XLA fuses
    into fewer passes than the gradient it derives from the formula.
    `"auto"` uses the native kernel where one exists (it trained faster on
    every backend: `BENCHMARKS.md`) and the formula elsewhere. All give the
    same values. Under mixed precision the normalisation is computed in
    float32 (a power of bfloat16 sums loses too many digits, and TensorFlow
    has no bfloat16 kernel on CPU) and cast back.

    Args:
        size: number of channels in the window, a positive odd integer.
            The paper uses 5.
        alpha: scale of the sum of squares, > 0. The paper uses 1e-4.
        beta: exponent, > 0. The paper uses 0.75.
        k: additive bias, >= 0 (and > 0 unless inputs are never all zero).
            The paper uses 2.
        axis: the channel axis. -1 for channels-last data.
        implementation: `"auto"`, `"ops"` or `"native"`, see above.
        **kwargs: base layer keyword arguments (`name`, `dtype`, ...).

    Examples:
        >>> layer = LocalResponseNormalization()
        >>> layer(np.ones((1, 2, 2, 8))).shape
        (1, 2, 2, 8)
    """

    def __init__(self, size=5, alpha=1e-4, beta=0.75, k=2.0, axis=-1,
                 implementation="auto", **kwargs):
        super().__init__(**kwargs)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % 2 == 0:
            raise ValueError(
                "`size` must be a positive odd integer (the window is centred "
                f"on each channel). Received: size={size!r}"
            )
        if not alpha > 0:
            raise ValueError(f"`alpha` must be > 0. Received: alpha={alpha!r}")
        if not beta > 0:
            raise ValueError(f"`beta` must be > 0. Received: beta={beta!r}")
        if not k >= 0:
            raise ValueError(f"`k` must be >= 0. Received: k={k!r}")
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ValueError(f"`axis` must be an integer. Received: axis={axis!r}")
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"`implementation` must be one of {IMPLEMENTATIONS}. "
                f"Received: implementation={implementation!r}"
            )
        self.size = size
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.k = float(k)
        self.axis = axis
        self.implementation = implementation
        self.supports_masking = True

    def build(self, input_shape):
        rank = len(input_shape)
        if not -rank <= self.axis < rank:
            raise ValueError(
                f"`axis` is out of range for inputs of rank {rank}. "
                f"Received: axis={self.axis}, input_shape={input_shape}"
            )
        self._channel_axis = self.axis % rank
        if input_shape[self._channel_axis] is None:
            raise ValueError(
                "The channel axis of the inputs must have a known size. "
                f"Received: input_shape={input_shape}, axis={self.axis}"
            )
        backend = keras.backend.backend()
        native_exists = backend in ("torch", "jax") or (
            backend == "tensorflow" and rank == 4 and self._channel_axis == 3
        )
        if self.implementation == "native" and not native_exists:
            raise ValueError(
                "No native LRN kernel exists for this backend and input (TensorFlow "
                "needs 4-D channels-last inputs): use "
                "implementation='ops' or 'auto'. Received: implementation='native', "
                f"backend={backend!r}, input_shape={input_shape}, axis={self.axis}"
            )
        # Where a native kernel exists it trained AlexNet faster than the ops
        # formula on every backend (bench/bench.py, figures in BENCHMARKS.md).
        self._native = native_exists and self.implementation != "ops"

    def call(self, inputs):
        compute_dtype = inputs.dtype
        x = ops.cast(inputs, "float32")
        if self._native:
            outputs = self._NATIVE_KERNELS[keras.backend.backend()](self, x)
        else:
            outputs = self._ops_formula(x)
        return ops.cast(outputs, compute_dtype)

    def _tf_kernel(self, x):
        import tensorflow as tf

        return tf.nn.local_response_normalization(
            x,
            depth_radius=self.size // 2,
            bias=self.k,
            alpha=self.alpha,
            beta=self.beta,
        )

    def _torch_kernel(self, x):
        from keras_alexnet.layers import _torch_kernels

        return _torch_kernels.local_response_norm(
            x, self._channel_axis, self.size, self.alpha, self.beta, self.k
        )

    def _jax_kernel(self, x):
        from keras_alexnet.layers import _jax_kernels

        return _jax_kernels.local_response_norm(
            x, self._channel_axis, self.size, self.alpha, self.beta, self.k
        )

    _NATIVE_KERNELS = {
        "tensorflow": _tf_kernel, "torch": _torch_kernel, "jax": _jax_kernel,
    }

    def _ops_formula(self, x):
        # Windowed sum of squares along the channel axis: zero-pad size // 2
        # channels on both sides, then add the `size` shifted slices. For the
        # paper's size 5 that is five adds, cheaper than a convolution.
        radius = self.size // 2
        rank = len(x.shape)
        channels = x.shape[self._channel_axis]
        squared = ops.square(x)
        pad_width = [(0, 0)] * rank
        pad_width[self._channel_axis] = (radius, radius)
        padded = ops.pad(squared, pad_width)
        window_sum = None
        for offset in range(self.size):
            index = [slice(None)] * rank
            index[self._channel_axis] = slice(offset, offset + channels)
            term = padded[tuple(index)]
            window_sum = term if window_sum is None else window_sum + term
        scale = ops.power(self.k + self.alpha * window_sum, -self.beta)
        return x * scale

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "size": self.size,
            "alpha": self.alpha,
            "beta": self.beta,
            "k": self.k,
            "axis": self.axis,
            "implementation": self.implementation,
        }
