"""Loads `.weights.h5` files into AlexNet under one backend and writes its logits.

Run as `KERAS_BACKEND=jax python -m tests.cross_backend_logits DIR`: for each
`<variant>.weights.h5` in DIR, builds the same architecture, loads the weights,
and saves the logits for DIR/inputs.npy to DIR/<variant>.<backend>.npy.
"""

import sys
from pathlib import Path

import keras
import numpy as np

from keras_alexnet import AlexNet

ARCHITECTURE = dict(input_shape=(99, 99, 3), classes=10, classifier_activation=None)


def main(directory):
    directory = Path(directory)
    inputs = np.load(directory / "inputs.npy")
    for weights in sorted(directory.glob("*.weights.h5")):
        variant = weights.name.split(".")[0]
        model = AlexNet(variant=variant, weights=str(weights), **ARCHITECTURE)
        logits = keras.ops.convert_to_numpy(model(inputs, training=False))
        np.save(directory / f"{variant}.{keras.backend.backend()}.npy", logits)


if __name__ == "__main__":
    main(sys.argv[1])
