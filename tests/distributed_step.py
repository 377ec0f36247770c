"""One training step of a small AlexNet on N devices; writes the resulting weights.

    KERAS_BACKEND=jax XLA_FLAGS=--xla_force_host_platform_device_count=2 \\
        python -m tests.distributed_step data-parallel 2 OUT.npz
    KERAS_BACKEND=jax XLA_FLAGS=--xla_force_host_platform_device_count=4 \\
        python -m tests.distributed_step model-parallel 4 OUT.npz --model-parallel 2 \\
        --collectives OUT.json

The same global batch and initial weights for every device count (dropout off),
so the updated weights must agree. With `KERAS_DISTRIBUTION_NUM_PROCESSES`,
`_PROCESS_ID` and `_JOB_ADDRESSES` set, the process joins a run over several
processes first, and DEVICES counts the devices of all of them.
`--collectives` also writes the collectives of the compiled step, per layer.
"""

import argparse
import dataclasses
import json

import numpy as np

BATCH = 8
CLASSES = 4


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("distribute")
    parser.add_argument("devices", type=int)
    parser.add_argument("out_file")
    parser.add_argument("--model-parallel", type=int, default=2)
    parser.add_argument("--collectives")
    args = parser.parse_args(argv)

    import keras

    from keras_alexnet import distribute, training

    processes = distribute.resolve_processes()
    if processes is not None:
        # Short timeouts: a test whose peer died fails in seconds.
        distribute.initialize_processes(processes, timeout=60, heartbeat_timeout=10)
    if keras.backend.backend() == "tensorflow" and args.devices > 1:
        distribute.split_cpu_for_tensorflow(args.devices)
    recipe = training.Recipe(image_size=67, resize_size=67, batch_size=BATCH, dropout=0.0,
                             initialization="he", seed=0)
    scope, replicas = distribute.distribution_scope(
        args.distribute if args.devices > 1 else "none", recipe.batch_size,
        model_parallel=args.model_parallel,
    )
    expected = args.devices // args.model_parallel if args.distribute == "model-parallel" else (
        args.devices)
    assert replicas == expected, (replicas, expected)
    keras.utils.set_random_seed(0)
    with scope:
        model = training.build_model(recipe, num_classes=CLASSES)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(BATCH, 67, 67, 3)).astype("float32")
    labels = rng.integers(0, CLASSES, BATCH)
    before = _values(model.trainable_weights)
    if args.collectives:
        found = distribute.collectives(model, images, labels)
        with open(args.collectives, "w") as handle:
            json.dump([dataclasses.asdict(collective) for collective in found], handle)
    import tensorflow as tf

    # A tf.data pipeline of global batches, as train.py feeds `fit`: over
    # several processes Keras gives each its slice of every batch.
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(BATCH)
    model.fit(dataset, epochs=1, shuffle=False, verbose=0)
    after = _values(model.trainable_weights)
    np.savez(args.out_file, *before, *after)


def _values(variables):
    """NumPy copies of `variables`, gathered from every process."""
    import keras

    if keras.backend.backend() == "jax":
        import jax
        from jax.experimental import multihost_utils

        if jax.process_count() > 1:
            return [np.asarray(multihost_utils.process_allgather(v.value, tiled=True))
                    for v in variables]
    return [keras.ops.convert_to_numpy(v) for v in variables]


if __name__ == "__main__":
    main()
