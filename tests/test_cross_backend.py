"""Weights saved under the current backend give the same logits under the others."""

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np

from keras_alexnet import AlexNet
from tests.cross_backend_logits import ARCHITECTURE

BACKENDS = ("tensorflow", "jax", "torch")
VARIANTS = ("original", "one_weird_trick", "zfnet")
ROOT = Path(__file__).resolve().parents[1]


def test_weights_move_between_backends(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = np.random.default_rng(0).uniform(-100, 100, (3, 99, 99, 3)).astype("float32")
    np.save(tmp_path / "inputs.npy", inputs)
    expected = {}
    for variant in VARIANTS:
        # Glorot weights and inputs of +-100 give logits of order 1, so the
        # comparison is meaningful.
        model = AlexNet(variant=variant, initialization="glorot", **ARCHITECTURE)
        model.save_weights(str(tmp_path / f"{variant}.weights.h5"))
        expected[variant] = keras.ops.convert_to_numpy(model(inputs, training=False))
        assert np.abs(expected[variant]).max() > 0.1

    current = keras.backend.backend()
    for backend in BACKENDS:
        if backend == current:
            continue
        result = subprocess.run(
            [sys.executable, "-m", "tests.cross_backend_logits", str(tmp_path)],
            env={**os.environ, "KERAS_BACKEND": backend}, cwd=ROOT,
            capture_output=True, text=True,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        for variant in VARIANTS:
            logits = np.load(tmp_path / f"{variant}.{backend}.npy")
            difference = np.abs(logits - expected[variant]).max()
            assert difference <= 1e-4, (current, backend, variant, difference)
