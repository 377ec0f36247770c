"""Distribution: one step on many devices equals one step on one device, and the errors."""

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_alexnet import distribute

ROOT = Path(__file__).resolve().parents[1]
BACKEND = keras.backend.backend()


def _distributed_weights(distribute_, devices, tmp_path, backend):
    out_file = tmp_path / f"{devices}.npz"
    env = {**os.environ, "KERAS_BACKEND": backend,
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    result = subprocess.run(
        [sys.executable, "-m", "tests.distributed_step", distribute_, str(devices),
         str(out_file)], cwd=ROOT, env=env, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(out_file) as archive:
        return [archive[key] for key in sorted(archive.files, key=lambda k: int(k[4:]))]


@pytest.mark.parametrize("distribute_,backend", [("mirrored", "tensorflow"),
                                                 ("data-parallel", "jax")])
def test_two_devices_step_equals_one_device_step(distribute_, backend, tmp_path):
    if BACKEND != backend:
        pytest.skip(f"{distribute_} runs on the {backend} backend")
    single = _distributed_weights(distribute_, 1, tmp_path, backend)
    double = _distributed_weights(distribute_, 2, tmp_path, backend)
    half = len(single) // 2
    for before_1, before_2 in zip(single[:half], double[:half]):
        np.testing.assert_array_equal(before_1, before_2)  # same start
    moved = 0
    for after_1, after_2, before in zip(single[half:], double[half:], single[:half]):
        np.testing.assert_allclose(after_2, after_1, rtol=1e-4, atol=1e-6)
        moved += not np.allclose(after_1, before)
    assert moved == half  # every weight was updated


def test_batch_must_divide_over_devices():
    with pytest.raises(ValueError, match="multiple of 3"):
        distribute._check_divisible(128, 3)
