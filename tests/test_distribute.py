"""Distribution: one step on many devices or processes equals one step on one device,
the model-parallel layout's communication, and the errors.

Fake CPU devices need XLA_FLAGS before JAX starts, so every run with more
than one device is a subprocess (`tests/distributed_step.py`).
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_alexnet import distribute
from keras_alexnet.models import AlexNet

ROOT = Path(__file__).resolve().parents[1]
BACKEND = keras.backend.backend()
jax_only = pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution runs on JAX only")


def _environment(devices, backend=BACKEND, **variables):
    return {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT),
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", **variables}


def _step_command(distribute_, devices, out_file, model_parallel=2, collectives=None):
    command = [sys.executable, "-m", "tests.distributed_step", distribute_, str(devices),
               str(out_file), "--model-parallel", str(model_parallel)]
    return command + (["--collectives", str(collectives)] if collectives else [])


def _load_step(out_file):
    with np.load(out_file) as archive:
        weights = [archive[key] for key in sorted(archive.files, key=lambda k: int(k[4:]))]
    half = len(weights) // 2
    return weights[:half], weights[half:]


@pytest.fixture(scope="module")
def step(tmp_path_factory):
    """`step(distribute, devices, model_parallel)`: (weights before, after, collectives)
    of one training step in a subprocess, each configuration run once."""
    folder = tmp_path_factory.mktemp("steps")
    runs = {}

    def run(distribute_, devices, model_parallel=2):
        key = (distribute_, devices, model_parallel)
        if key not in runs:
            name = f"{distribute_}-{devices}-{model_parallel}"
            out_file, found = folder / f"{name}.npz", folder / f"{name}.json"
            collect = distribute_ == "model-parallel"
            result = subprocess.run(
                _step_command(distribute_, devices, out_file, model_parallel,
                              found if collect else None),
                cwd=ROOT, env=_environment(devices), capture_output=True, text=True)
            assert result.returncode == 0, result.stderr[-3000:]
            collectives = json.loads(found.read_text()) if collect else None
            runs[key] = (*_load_step(out_file), collectives)
        return runs[key]

    return run


def _assert_same_step(reference, other):
    """Same start; after one step the same weights within 1e-5 relative, and the
    same update of every weight (the step itself) within 1e-4 in norm."""
    (before, after), (other_before, other_after) = reference[:2], other[:2]
    for start, other_start in zip(before, other_before):
        np.testing.assert_array_equal(other_start, start)
    for start, end, other_end in zip(before, after, other_after):
        np.testing.assert_allclose(other_end, end, rtol=1e-5, atol=1e-7)
        update, other_update = end - start, other_end - start
        assert np.linalg.norm(update) > 0  # every weight was updated
        assert np.linalg.norm(other_update - update) <= 1e-4 * np.linalg.norm(update)


def test_batch_must_divide_over_devices():
    with pytest.raises(ValueError, match="multiple of 3"):
        distribute._check_divisible(128, 3)


@pytest.mark.parametrize("distribute_,backend", [
    ("mirrored", "tensorflow"),
    pytest.param("data-parallel", "jax", marks=pytest.mark.slow),
])
def test_two_devices_step_equals_one_device_step(distribute_, backend, step):
    if BACKEND != backend:
        pytest.skip(f"{distribute_} runs on the {backend} backend")
    _assert_same_step(step("none", 1), step(distribute_, 2))


@jax_only
@pytest.mark.slow
@pytest.mark.parametrize("devices", [2, 4], ids=["model-parallel", "hybrid"])
def test_model_parallel_step_equals_one_device_step(devices, step):
    # 2 devices: the paper's layout; 4: two data-parallel replicas of it.
    _assert_same_step(step("none", 1), step("model-parallel", devices))


def _by_layer(collectives, axis="model"):
    """{(layer, "forward" or "backward"): sorted kinds} of collectives over `axis`."""
    table = {}
    for collective in collectives:
        if collective["axis"] == axis:
            for layer in collective["layers"]:
                key = (layer, "backward" if collective["backward"] else "forward")
                table.setdefault(key, []).append(collective["kind"])
    return {key: sorted(kinds) for key, kinds in table.items()}


@jax_only
@pytest.mark.slow
def test_model_parallel_communicates_where_the_paper_does(step):
    """The paper's GPUs exchange activations only at conv3 and the fc layers
    (§3.2); our LRN also reaches across the split (a halo of two channels),
    and the softmax and loss over fc8's split classes add small all-reduces."""
    two_devices = step("model-parallel", 2)[2]
    layers = _by_layer(two_devices)
    # Nothing else communicates: not conv1, conv2, conv4, conv5 (each device
    # convolves its own group), nor the pools. "other" is metrics and weight decay.
    assert {layer for layer, _ in layers} == {
        "lrn1", "lrn2", "conv3", "flatten", "fc6", "fc7", "fc8", "loss", "other"}
    assert layers[("conv3", "forward")] == ["all-gather"]  # all of pool2's maps
    assert layers[("conv3", "backward")] == ["reduce-scatter"]
    assert layers[("flatten", "forward")] == ["all-gather"]  # fc6 sees all of pool5
    assert ("fc6", "forward") not in layers
    for name in ("fc7", "fc8"):
        assert "all-gather" in layers[(name, "forward")]
    for name in ("fc6", "fc7", "fc8"):
        assert "all-reduce" in layers[(name, "backward")]  # the input's gradient
    for name in ("lrn1", "lrn2"):
        for direction in ("forward", "backward"):
            assert set(layers[(name, direction)]) == {"collective-permute"}
    assert {collective["axis"] for collective in two_devices} == {"model"}
    # Hybrid: the same exchanges within each replica, plus the data-parallel
    # sum of the gradients over the batch axis.
    hybrid = step("model-parallel", 4)[2]
    assert _by_layer(hybrid) == layers
    batch = [collective for collective in hybrid if collective["axis"] == "batch"]
    assert {collective["kind"] for collective in batch} == {"all-reduce"}
    assert all(collective["backward"] for collective in batch)
    summed = {layer for collective in batch for layer in collective["layers"]}
    assert summed >= {"conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"}


@jax_only
def test_model_axis_must_divide_every_layer_width(tmp_path):
    # 96 filters split in 3, but conv2's 256 do not.
    result = subprocess.run(
        _step_command("model-parallel", 3, tmp_path / "out.npz", model_parallel=3),
        cwd=ROOT, env=_environment(3), capture_output=True, text=True)
    assert result.returncode != 0
    assert "conv2/kernel has 256 outputs, which do not split evenly over the 3" in (
        result.stderr)


@jax_only
@pytest.mark.parametrize("model_parallel,message", [
    (2, "does not divide the 1 devices"),
    (0, "positive integer"),
    (True, "positive integer"),
])
def test_model_parallel_distribution_errors(model_parallel, message):
    with pytest.raises(ValueError, match=message):
        distribute.model_parallel_distribution(model_parallel)


@pytest.mark.skipif(BACKEND == "jax", reason="the error of the other backends")
def test_model_parallel_needs_jax():
    expected = "no distribution API" if BACKEND == "torch" else "needs --backend jax"
    with pytest.raises(ValueError, match=expected):
        distribute.check_distribution("model-parallel")
    with pytest.raises(ValueError, match="JAX backend only"):
        distribute.model_parallel_distribution(2)


def test_layout_map_splits_every_alexnet_weight_on_its_outputs():
    mesh = keras.distribution.DeviceMesh((1, 1), ("batch", "model"), ["cpu:0"])
    layout_map = distribute.alexnet_layout_map(mesh)
    model = AlexNet(input_shape=(67, 67, 3), classes=4)
    for weight in model.weights:
        axes = layout_map[weight.path].axes
        assert axes == (None,) * (len(weight.shape) - 1) + ("model",), weight.path
    assert layout_map["outer/alexnet/conv2/kernel"].axes == (None, None, None, "model")
    assert layout_map["lrn1/output"].axes == ("batch", None, None, "model")
    assert layout_map["drop7/output"].axes == ("batch", "model")
    assert layout_map["flatten/output"].axes == ("batch", None)  # fc6 sees all of pool5
    for path in ("fc8/output", "images/output", "sgd/conv2_kernel_momentum"):
        assert layout_map[path] is None, path


# ------------------------------------------------------------ processes


def test_resolve_processes_from_arguments_and_environment(monkeypatch):
    for variable in distribute.ENVIRONMENT.values():
        monkeypatch.delenv(variable, raising=False)
    assert distribute.resolve_processes() is None
    assert distribute.resolve_processes(1, 0, "localhost:1234") is None
    monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "2")
    monkeypatch.setenv("KERAS_DISTRIBUTION_PROCESS_ID", "1")
    monkeypatch.setenv("KERAS_DISTRIBUTION_JOB_ADDRESSES", "10.0.0.1:1234,10.0.0.2:1234")
    if BACKEND != "jax":
        with pytest.raises(ValueError, match="JAX only"):
            distribute.resolve_processes()
        return
    processes = distribute.resolve_processes()
    assert (processes.num_processes, processes.process_id, processes.coordinator) == (
        2, 1, "10.0.0.1:1234")
    # Arguments win over the environment.
    assert distribute.resolve_processes(process_id=0).process_id == 0


@pytest.mark.parametrize("arguments,message", [
    ((2, 2, "a:1,b:1"), r"in \[0, 1\]"),
    ((2, -1, "a:1,b:1"), r"in \[0, 1\]"),
    ((3, 0, "a:1,b:1"), "2 job addresses for 3 processes"),
    ((2, 0, "a:1,b"), "host:port"),
    ((2, 0, None), "Missing: job_addresses"),
    (("two", 0, "a:1"), "must be an integer"),
    ((0, 0, "a:1"), ">= 1"),
])
def test_resolve_processes_errors(arguments, message, monkeypatch):
    for variable in distribute.ENVIRONMENT.values():
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(ValueError, match=message):
        distribute.resolve_processes(*arguments)


def _free_port():
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def _process_environment(process_id, port):
    return _environment(1, KERAS_DISTRIBUTION_NUM_PROCESSES="2",
                        KERAS_DISTRIBUTION_PROCESS_ID=str(process_id),
                        KERAS_DISTRIBUTION_JOB_ADDRESSES=f"localhost:{port}")


@jax_only
@pytest.mark.slow
def test_two_processes_train_like_one_process_with_two_devices(step, tmp_path):
    """Two processes of one CPU device each, talking through gloo on localhost."""
    port = _free_port()
    processes = [
        subprocess.Popen(_step_command("data-parallel", 2, tmp_path / f"{index}.npz"),
                         cwd=ROOT, env=_process_environment(index, port),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for index in range(2)
    ]
    for process in processes:
        _, errors = process.communicate(timeout=600)
        assert process.returncode == 0, errors[-3000:]
    two_devices = step("data-parallel", 2)
    for index in range(2):
        _assert_same_step(two_devices, _load_step(tmp_path / f"{index}.npz"))


@jax_only
def test_a_dead_process_stops_the_others(tmp_path):
    """Process 1 joins and dies: process 0 must stop with an error, not wait forever."""
    port = _free_port()
    survivor = subprocess.Popen(
        _step_command("data-parallel", 2, tmp_path / "0.npz"), cwd=ROOT,
        env=_process_environment(0, port), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    joins_and_dies = ("from keras_alexnet import distribute; import os; "
                      "distribute.initialize_processes(distribute.resolve_processes(), "
                      "timeout=60); os._exit(1)")
    subprocess.run([sys.executable, "-c", joins_and_dies], cwd=ROOT,
                   env=_process_environment(1, port), capture_output=True, timeout=120)
    started = time.monotonic()
    _, errors = survivor.communicate(timeout=300)
    assert survivor.returncode != 0
    assert "heartbeat" in errors or "tasks have crashed" in errors, errors[-3000:]
    # tests/distributed_step.py gives heartbeats 10 s.
    assert time.monotonic() - started < 120
    assert not (tmp_path / "0.npz").exists()
