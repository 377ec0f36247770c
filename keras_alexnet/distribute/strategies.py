"""Which engine runs a training: none, MirroredStrategy, or keras.distribution on JAX."""

import contextlib

import keras

from keras_alexnet.distribute.model_parallel import (
    PAPER_MODEL_PARALLEL,
    model_parallel_distribution,
)

DISTRIBUTIONS = ("none", "mirrored", "data-parallel", "model-parallel")
TORCH_HAS_NO_DISTRIBUTION = (
    "Keras 3.15 has no distribution API for the PyTorch backend (its main branch adds "
    "DataParallel through torch DDP for the next release, and ModelParallel through DTensor "
    "after it: keras-team/keras#23418)."
)
MULTI_WORKER_MIRRORED_IS_BROKEN = (
    "Training over several processes on TensorFlow would be "
    "tf.distribute.MultiWorkerMirroredStrategy, and Keras 3.15's model.fit fails with it on "
    "TensorFlow 2.21 before the first step (ValueError: Attempt to convert a value "
    "(PerReplica...); keras-team/keras#20585). Use --backend jax --distribute data-parallel "
    "(or model-parallel): keras.distribution trains over several processes on JAX."
)


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
        raise ValueError(f"{TORCH_HAS_NO_DISTRIBUTION} Use --backend tensorflow --distribute "
                         "mirrored or --backend jax --distribute data-parallel (or "
                         "model-parallel).")
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
    if distribute == "model-parallel" and backend != "jax":
        raise ValueError(
            "--distribute model-parallel is keras.distribution.ModelParallel and needs "
            f"--backend jax (this run uses {backend!r}); Keras has no model parallelism "
            "for TensorFlow."
        )
    return True


def distribution_scope(distribute, batch_size, model_parallel=PAPER_MODEL_PARALLEL,
                       per_process_data=False):
    """A context to build and compile the model in, and the number of replicas.

    `mirrored`: `tf.distribute.MirroredStrategy` over every GPU (or, with no
    GPU, every logical CPU device); `data-parallel`:
    `keras.distribution.DataParallel` over every JAX device;
    `model-parallel`: `model_parallel_distribution(model_parallel)`, whose
    replicas are the devices of its batch axis.

    Over several processes Keras gives each process its part of every
    global batch of the dataset `fit` gets (`auto_shard_dataset`). With
    `per_process_data=True` each process's dataset already yields only its
    own part (`batch_size / processes` examples: a tf.data service job the
    processes share, `data_service.EpochJobs`), and Keras takes it as it
    is. Then each process must hold whole model replicas: the processes of
    a replica split over several would need the same batches, which the
    service does not send. That is a ValueError.
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
    if distribute == "model-parallel":
        distribution = model_parallel_distribution(model_parallel)
        replicas = distribution.device_mesh.shape[0]
    else:
        devices = keras.distribution.list_devices()
        replicas = len(devices)
        distribution = keras.distribution.DataParallel(devices=devices)
    _check_divisible(batch_size, replicas)
    if per_process_data:
        _check_whole_replicas_per_process(distribution.device_mesh.shape[-1]
                                          if distribute == "model-parallel" else 1)
        distribution.auto_shard_dataset = False
    keras.distribution.set_distribution(distribution)
    return contextlib.nullcontext(), replicas


def _check_whole_replicas_per_process(model_parallel):
    import jax

    if jax.local_device_count() % model_parallel:
        raise ValueError(
            f"Each process reads its own batches from the tf.data service, so each must "
            f"hold whole model replicas of {model_parallel} devices; this process has "
            f"{jax.local_device_count()}. Give every process a multiple of {model_parallel} "
            "devices (--cpu-devices on CPUs), or train over several processes without the "
            "service (each process of a replica then reads the same part of --data).")


def _check_divisible(batch_size, devices):
    if batch_size % devices:
        raise ValueError(
            f"The global batch size {batch_size} does not divide evenly over "
            f"{devices} devices; use a multiple of {devices}."
        )
