"""Distribution in one place: which engine spreads a training over devices.

    from keras_alexnet import distribute
    scope, replicas = distribute.distribution_scope("data-parallel", batch_size=128)
    with scope:
        model = training.build_model(recipe, num_classes)
"""

import contextlib

import keras

DISTRIBUTIONS = ("none", "mirrored", "data-parallel")


def split_cpu_for_tensorflow(devices):
    """Splits the CPU into `devices` logical devices (before TensorFlow starts)."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(devices)]
    )


def check_distribution(distribute):
    """Raises ValueError unless the current backend supports `distribute`.

    Returns whether the run is distributed at all.
    """
    backend = keras.backend.backend()
    if distribute not in DISTRIBUTIONS:
        raise ValueError(f"`distribute` must be one of {DISTRIBUTIONS}. Received: {distribute!r}")
    if distribute == "none":
        return False
    if backend == "torch":
        raise ValueError(
            "Keras 3 has no distribution API for the PyTorch backend: use --backend "
            "tensorflow --distribute mirrored or --backend jax --distribute data-parallel."
        )
    if distribute == "mirrored" and backend != "tensorflow":
        raise ValueError(
            "--distribute mirrored is tf.distribute.MirroredStrategy and needs "
            f"--backend tensorflow (this run uses {backend!r}); on JAX use data-parallel."
        )
    if distribute == "data-parallel" and backend != "jax":
        raise ValueError(
            "--distribute data-parallel is keras.distribution.DataParallel and needs "
            f"--backend jax (this run uses {backend!r}); on TensorFlow use mirrored."
        )
    return True


def distribution_scope(distribute, batch_size):
    """A context to build and compile the model in, and the number of replicas.

    `mirrored`: `tf.distribute.MirroredStrategy` over every GPU (or, with no
    GPU, every logical CPU device); `data-parallel`:
    `keras.distribution.DataParallel` over every JAX device.
    """
    if not check_distribution(distribute):
        return contextlib.nullcontext(), 1
    if distribute == "mirrored":
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        devices = [device.name for device in gpus or tf.config.list_logical_devices("CPU")]
        _check_divisible(batch_size, len(devices))
        strategy = tf.distribute.MirroredStrategy(devices=devices)
        return strategy.scope(), strategy.num_replicas_in_sync
    devices = keras.distribution.list_devices()
    _check_divisible(batch_size, len(devices))
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return contextlib.nullcontext(), len(devices)


def _check_divisible(batch_size, devices):
    if batch_size % devices:
        raise ValueError(
            f"The global batch size {batch_size} does not divide evenly over "
            f"{devices} devices; use a multiple of {devices}."
        )
