"""One training step of a small AlexNet on N devices; writes the resulting weights.

    KERAS_BACKEND=jax XLA_FLAGS=--xla_force_host_platform_device_count=2 \\
        python -m tests.distributed_step data-parallel 2 OUT.npz

The same global batch and initial weights for every device count (dropout off),
so the updated weights must agree.
"""

import sys

import numpy as np


def main(distribute, devices, out_file):
    import keras

    from keras_alexnet import distribute as distribution, training

    if keras.backend.backend() == "tensorflow" and devices > 1:
        distribution.split_cpu_for_tensorflow(devices)
    recipe = training.Recipe(image_size=67, resize_size=67, batch_size=8, dropout=0.0,
                             initialization="he", seed=0)
    scope, replicas = distribution.distribution_scope(distribute if devices > 1 else "none",
                                                      recipe.batch_size)
    assert replicas == devices, (replicas, devices)
    keras.utils.set_random_seed(0)
    with scope:
        model = training.build_model(recipe, num_classes=5)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(8, 67, 67, 3)).astype("float32")
    labels = rng.integers(0, 5, 8)
    before = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    model.fit(images, labels, batch_size=8, epochs=1, shuffle=False, verbose=0)
    after = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    np.savez(out_file, *before, *after)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
