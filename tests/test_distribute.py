"""Distribution: one step on many devices equals one step on one device, the
model-parallel layout's communication, train.py over several processes, and the errors.

Fake CPU devices need XLA_FLAGS before JAX starts, so every run with more
than one device is a subprocess (`tests/distributed_step.py`, `train.py`).
"""

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

import train as train_script
from keras_alexnet import distribute, training
from keras_alexnet.models import AlexNet
from keras_alexnet.run_folder import RunFolder
from tests.helpers import write_colour_folder

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
    # Exactly the README's table. Nothing else communicates: not conv1, conv2,
    # conv4, conv5 (each device convolves its own group), nor the pools.
    halo = ["collective-permute"] * 4  # the 2 maps next to the split, each way
    assert layers == {
        ("lrn1", "forward"): halo, ("lrn1", "backward"): halo,
        ("lrn2", "forward"): halo, ("lrn2", "backward"): halo,
        ("conv3", "forward"): ["all-gather"],  # all of pool2's maps
        ("conv3", "backward"): ["reduce-scatter"],
        ("flatten", "forward"): ["all-gather"],  # fc6 sees all of pool5
        ("fc6", "backward"): ["all-reduce"],  # the gradient of fc6's input
        ("fc7", "forward"): ["all-gather"], ("fc7", "backward"): ["all-reduce"],
        # fc7 gathered; the softmax's max and sum over the split classes.
        ("fc8", "forward"): ["all-gather", "all-reduce", "all-reduce"],
        ("fc8", "backward"): ["all-reduce", "all-reduce"],
        ("loss", "forward"): ["all-reduce"], ("loss", "backward"): ["all-reduce"],
        # Metrics and the weight-decay sums of the split kernels.
        ("other", "forward"): ["all-reduce", "all-reduce"],
        ("other", "backward"): ["all-reduce"],
    }
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
def test_collectives_leaves_the_model_as_it_was():
    """Compiling the step builds the metrics and the optimizer, but neither trains
    nor counts the batch in the metrics."""
    recipe = training.Recipe(image_size=67, resize_size=67, batch_size=4, dropout=0.0,
                             initialization="he", seed=0)
    model = training.build_model(recipe, num_classes=4)
    weights = [keras.ops.convert_to_numpy(weight) for weight in model.weights]
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, 67, 67, 3)).astype("float32")
    assert distribute.collectives(model, images, rng.integers(0, 4, 4)) == []  # one device
    assert model.optimizer.built and model.metrics_variables
    for variable in model.metrics_variables:
        assert not np.any(keras.ops.convert_to_numpy(variable)), variable.path
    for weight, before in zip(model.weights, weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(weight), before)


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
        # TensorFlow: why not MultiWorkerMirroredStrategy; PyTorch: what Keras adds next.
        expected = "keras-team/keras#20585" if BACKEND == "tensorflow" else "#23418"
        with pytest.raises(ValueError, match=expected):
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


@jax_only
@pytest.mark.parametrize("timeouts", [{"heartbeat_timeout": -1}, {"heartbeat_timeout": 0},
                                      {"timeout": 0}])
def test_initialize_processes_refuses_a_timeout_below_one(timeouts):
    """Refused before JAX, which would abort the process with its C++ stack."""
    processes = distribute.Processes(2, 0, ("localhost:1234",))
    with pytest.raises(ValueError, match="must be a positive integer"):
        distribute.initialize_processes(processes, **timeouts)


def _free_port():
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def _process_environment(process_id, port):
    return _environment(1, KERAS_DISTRIBUTION_NUM_PROCESSES="2",
                        KERAS_DISTRIBUTION_PROCESS_ID=str(process_id),
                        KERAS_DISTRIBUTION_JOB_ADDRESSES=f"localhost:{port}")


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


# ------------------------------------------------ train.py over several processes

FOUR_COLOURS = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230),
                "yellow": (230, 230, 20)}
# Four classes, so that fc8 splits over a model axis of 2. The paper's dropout,
# as the README's commands train: JAX draws the same masks in every layout
# (its random bits do not depend on how an array is split), so every layout
# trains the same weights, and every checkpoint holds the seed generators.
RECIPE = ["--validation-fraction", "0.25", "--image-size", "67", "--resize-size", "72",
          "--batch-size", "8", "--init", "he", "--lr", "0.003", "--steps-per-epoch", "2",
          "--seed", "0", "--quiet"]
# What a run writes into its folder.
RUN_ENTRIES = ["backup", "best.json", "best.keras", "final.keras", "log.csv", "run.json",
               "summary.json", "tensorboard"]


@pytest.fixture(scope="module")
def four_colours(tmp_path_factory):
    return write_colour_folder(tmp_path_factory.mktemp("four_colours"), FOUR_COLOURS, 12)


@pytest.fixture(scope="module")
def train_environment(tmp_path_factory):
    """This environment without anything that would choose devices or processes.

    The runs share JAX's compilation cache: they compile the same programs.
    """
    return {**{key: value for key, value in os.environ.items()
               if key != "XLA_FLAGS" and key not in distribute.ENVIRONMENT.values()},
            "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT),
            "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def _train_py(*arguments):
    return [sys.executable, str(ROOT / "train.py"), "--backend", "jax", *arguments]


def _start_two_processes(arguments, folders, environment, process_1_arguments=()):
    """Two train.py processes of one CPU device each, process i working in folders[i]."""
    port = _free_port()
    return [subprocess.Popen(
        _train_py(*arguments, *(process_1_arguments if index else ()), "--num-processes", "2",
                  "--process-id", str(index), "--job-addresses", f"localhost:{port}"),
        cwd=folders[index], env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for index in range(2)]


def _finish(processes, timeout=600):
    """(return code, stdout, stderr) of each process; kills them all after `timeout`."""
    try:
        return [(process, *process.communicate(timeout=timeout)) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()


def _assert_succeeded(finished):
    for process, out, errors in finished:
        assert process.returncode == 0, (out[-2000:], errors[-3000:])


def _epoch_lines(out):
    """The epoch summaries without the measured speed."""
    return [re.sub(r", \d+ images/s", "", line) for line in out.splitlines()
            if line.startswith("epoch ")]


def _final_weights(run_folder):
    model = keras.saving.load_model(Path(run_folder) / "final.keras", compile=False)
    return [keras.ops.convert_to_numpy(weight) for weight in model.weights]


def _assert_same_weights(run_folder, reference_folder):
    for weight, reference in zip(_final_weights(run_folder), _final_weights(reference_folder)):
        np.testing.assert_allclose(weight, reference, rtol=1e-5, atol=1e-7)


def _folders(tmp_path, *names):
    folders = [tmp_path / name for name in names]
    for folder in folders:
        folder.mkdir()
    return folders


@pytest.fixture(scope="module")
def one_process_two_devices(four_colours, tmp_path_factory, train_environment):
    """The reference: 3 epochs of 2 steps, one process with 2 CPU devices."""
    output = tmp_path_factory.mktemp("reference") / "run"
    result = subprocess.run(
        _train_py("--data", str(four_colours), *RECIPE, "--epochs", "3", "--output",
                  str(output), "--distribute", "data-parallel", "--cpu-devices", "2"),
        cwd=ROOT, env=train_environment, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return output, result.stdout


@jax_only
@pytest.mark.slow
def test_two_processes_train_like_one_process_with_two_devices(four_colours, tmp_path,
                                                               one_process_two_devices,
                                                               train_environment):
    """Each process one CPU device, talking through gloo on localhost; relative paths
    from different folders, so that anything process 1 wrote would land in its own."""
    reference, reference_out = one_process_two_devices
    folders = _folders(tmp_path, "process0", "process1")
    finished = _finish(_start_two_processes(
        ["--data", str(four_colours), *RECIPE, "--epochs", "3", "--output", "run",
         "--distribute", "data-parallel"], folders, train_environment))
    _assert_succeeded(finished)
    run = folders[0] / "run"
    _assert_same_weights(run, reference)
    # Every process saw every validation image and computed the same numbers.
    (_, out0, _), (_, out1, _) = finished
    assert _epoch_lines(out0) == _epoch_lines(out1) == _epoch_lines(reference_out)
    assert "Process 1 of 2 done; process 0 wrote the run folder." in out1
    # Process 0 wrote what a run of one process writes; process 1 wrote nothing.
    assert [entry.name for entry in folders[0].iterdir()] == ["run"]
    assert sorted(entry.name for entry in run.iterdir()) == RUN_ENTRIES
    assert list(folders[1].rglob("*")) == []
    settings = json.loads((run / "run.json").read_text())
    assert (settings["processes"], settings["replicas"]) == (2, 2)


@jax_only
@pytest.mark.slow
def test_a_killed_process_stops_the_other_and_the_run_resumes(four_colours, tmp_path,
                                                              one_process_two_devices,
                                                              train_environment):
    reference, _ = one_process_two_devices
    folders = _folders(tmp_path, "process0", "process1")
    output = tmp_path / "run"
    processes = _start_two_processes(
        ["--data", str(four_colours), *RECIPE, "--epochs", "3", "--output", str(output),
         "--distribute", "data-parallel", "--heartbeat-timeout", "10"], folders,
        train_environment)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and processes[0].poll() is None:
            checkpoint = RunFolder(output).read_checkpoint()
            if checkpoint and checkpoint["epoch"] >= 1:
                break
            time.sleep(0.05)
        assert processes[0].poll() is None, "the run ended before it could be killed"
        processes[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        (survivor, _, errors), _ = _finish(processes, timeout=120)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    # Process 0 stops by itself: its collective fails (our message, exit code 6), or
    # JAX ends it after 10 s without heartbeats (SIGABRT).
    assert time.monotonic() - killed < 60
    if survivor.returncode == train_script.LOST_PROCESS_EXIT_CODE:
        assert "Process 0 of 2 stopped training" in errors
        assert "restart every process with --resume" in errors
    else:
        assert survivor.returncode == -signal.SIGABRT, errors[-3000:]
        assert "Terminating process because the JAX distributed service" in errors
    assert not (output / "summary.json").exists()

    # Every process again, with --resume: the run ends as the uninterrupted one.
    resumed = _finish(_start_two_processes(
        ["--output", str(output), "--resume", "--distribute", "data-parallel", "--quiet"],
        folders, train_environment))
    _assert_succeeded(resumed)
    assert "Resuming" in resumed[0][1] and "after epoch 0 of 3" not in resumed[0][1]
    _assert_same_weights(output, reference)
    with open(output / "log.csv") as handle:
        assert [int(row["epoch"]) for row in csv.DictReader(handle)] == [0, 1, 2]
    assert list(folders[1].rglob("*")) == []


@jax_only
@pytest.mark.slow
def test_model_parallel_over_two_processes_checkpoints_resumes_and_exports(
        four_colours, tmp_path, one_process_two_devices, train_environment):
    """The paper's layout split over two processes (each holds half of every layer):
    saving gathers the halves, process 0 writes. It trains the same weights."""
    reference, _ = one_process_two_devices
    folders = _folders(tmp_path, "process0", "process1")
    output = tmp_path / "run"
    first = _finish(_start_two_processes(
        ["--data", str(four_colours), *RECIPE, "--epochs", "1", "--output", str(output),
         "--distribute", "model-parallel", "--model-parallel", "2", "--export", "export"],
        folders, train_environment))
    _assert_succeeded(first)
    assert RunFolder(output).read_checkpoint()["epoch"] == 1
    # The distribution and the export come from run.json; the export of 1 epoch is
    # the run's own, and replaced.
    more = _finish(_start_two_processes(
        ["--output", str(output), "--resume", "--epochs", "3", "--quiet"], folders,
        train_environment))
    _assert_succeeded(more)
    assert "Continuing to 3 epochs" in more[0][1]
    _assert_same_weights(output, reference)
    settings = json.loads((output / "run.json").read_text())
    assert (settings["distribute"], settings["model_parallel"], settings["replicas"],
            settings["processes"]) == ("model-parallel", 2, 1, 2)
    assert (folders[0] / "export" / "saved_model.pb").exists()
    assert list(folders[1].rglob("*")) == []


@jax_only
@pytest.mark.slow
def test_two_processes_train_on_batches_from_the_tf_data_service(four_colours, tmp_path,
                                                                 service, train_environment):
    """Each process receives its own part of every global batch from the service's
    workers; a model replica split over the processes cannot, and is refused."""
    folders = _folders(tmp_path, "process0", "process1")
    # Global batches of 2: each process gets batches of 1 from the service, which
    # Keras must take as they are (its own sharding would have to split them).
    finished = _finish(_start_two_processes(
        ["--data", str(four_colours), *RECIPE, "--batch-size", "2", "--epochs", "2",
         "--output", "run", "--distribute", "data-parallel", "--data-service", service],
        folders, train_environment))
    _assert_succeeded(finished)
    (_, out0, _), (_, out1, _) = finished
    for out in (out0, out1):
        assert f"Training batches from the tf.data service at {service}." in out
    # One model, trained by both processes step by step, validated alike.
    assert len(_epoch_lines(out0)) == 2 and _epoch_lines(out0) == _epoch_lines(out1)
    summary = json.loads((folders[0] / "run" / "summary.json").read_text())
    assert (summary["processes"], summary["replicas"], summary["data_service"]) == (
        2, 2, service)
    assert list(folders[1].rglob("*")) == []

    refused = _finish(_start_two_processes(
        ["--data", str(four_colours), *RECIPE, "--output", str(tmp_path / "split"),
         "--distribute", "model-parallel", "--model-parallel", "2", "--data-service", service],
        [ROOT, ROOT], train_environment), timeout=300)
    for process, _, errors in refused:
        assert process.returncode == 2, errors[-3000:]
        assert "each must hold whole model replicas of 2 devices; this process has 1" in errors
    assert not (tmp_path / "split").exists()


@jax_only
def test_per_process_data_turns_off_keras_dataset_sharding():
    try:
        for per_process_data in (False, True):
            distribute.distribution_scope("data-parallel", 8, per_process_data=per_process_data)
            assert keras.distribution.distribution().auto_shard_dataset is not per_process_data
    finally:
        keras.distribution.set_distribution(None)


@jax_only
@pytest.mark.parametrize("process_1_arguments,message", [
    (["--lr", "0.1"], "recipe.learning_rate: 0.003 (process 0) vs 0.1"),
    (["--data", "/no/such/folder"], "process 1 stopped: ValueError: --data: no such folder"),
])
def test_every_process_checks_before_any_starts(four_colours, tmp_path, process_1_arguments,
                                                message, train_environment):
    """A process started differently, or whose checks fail, stops every process
    with exit code 2 before anything is written, instead of leaving the others
    waiting in a collective."""
    output = tmp_path / "run"
    finished = _finish(_start_two_processes(
        ["--data", str(four_colours), *RECIPE, "--output", str(output), "--distribute",
         "data-parallel"], [ROOT, ROOT], train_environment, process_1_arguments), timeout=300)
    for process, _, errors in finished:
        assert process.returncode == 2, errors[-3000:]
    assert message in finished[0][2]
    assert not output.exists()


@jax_only
@pytest.mark.parametrize("arguments,message", [
    (["--cpu-devices", "2", "--model-parallel", "3"], "does not divide the 2 devices"),
    (["--cpu-devices", "3", "--model-parallel", "3"],
     "conv2/kernel has 256 outputs, which do not split evenly over the 3 devices"),
])
def test_train_py_refuses_a_model_axis_that_does_not_split(four_colours, tmp_path, arguments,
                                                           message, train_environment):
    output = tmp_path / "run"
    result = subprocess.run(
        _train_py("--data", str(four_colours), *RECIPE, "--output", str(output),
                  "--distribute", "model-parallel", *arguments),
        cwd=ROOT, env=train_environment, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr[-3000:]
    assert message in result.stderr
    assert not output.exists()


PROCESSES = ["--num-processes", "2", "--process-id", "0", "--job-addresses",
             "localhost:1234,localhost:1235"]


@pytest.mark.parametrize("arguments,messages", [
    (["--distribute", "data-parallel", "--num-processes", "2", "--process-id", "2",
      "--job-addresses", "a:1,b:1"], {"any": "in [0, 1]"}),
    (["--distribute", "data-parallel", "--num-processes", "3", "--process-id", "0",
      "--job-addresses", "a:1,b:1"], {"any": "2 job addresses for 3 processes"}),
    (["--distribute", "data-parallel", *PROCESSES],
     {"tensorflow": "MultiWorkerMirroredStrategy", "torch": "keras-team/keras#23418"}),
    (["--distribute", "mirrored", *PROCESSES], {"tensorflow": "keras-team/keras#20585"}),
    (["--distribute", "none", *PROCESSES], {"jax": "needs --distribute data-parallel"}),
    (["--distribute", "model-parallel"],
     {"tensorflow": "needs --backend jax", "torch": "no distribution API"}),
    (["--distribute", "data-parallel", "--model-parallel", "2"],
     {"tensorflow": "needs --backend jax", "torch": "no distribution API",
      "jax": "--model-parallel sets the model axis"}),
    (["--heartbeat-timeout", "5"], {"any": "--heartbeat-timeout is for a run over"}),
])
def test_train_py_refuses_bad_distribution_arguments(arguments, messages, tmp_path,
                                                     monkeypatch, capsys):
    """Checked before any device is touched: in this process, on every backend."""
    message = messages.get("any", messages.get(BACKEND))
    if message is None:
        pytest.skip(f"a valid combination on the {BACKEND} backend")
    for variable in distribute.ENVIRONMENT.values():
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    output = tmp_path / "run"
    assert train_script.main(["--output", str(output), *arguments]) == 2
    assert message in capsys.readouterr().err
    assert not output.exists()


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TF_CONFIG is TensorFlow's")
def test_a_tf_config_cluster_is_refused_on_tensorflow(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({
        "cluster": {"worker": ["localhost:1234", "localhost:1235"]},
        "task": {"type": "worker", "index": 0}}))
    with pytest.raises(ValueError, match="MultiWorkerMirroredStrategy"):
        distribute.resolve_processes()


# ------------------------------------------------------------ ModelWriter


def _recipe_with_dropout(**fields):
    # The paper's dropout: every Dropout layer holds a seed generator.
    return training.Recipe(image_size=67, resize_size=67, batch_size=4, initialization="he",
                           seed=0, **fields)


def test_the_copy_to_save_has_every_variable_of_a_model_with_dropout():
    """`ModelWriter`'s copy holds the model's and the optimizer's variables in the
    same order, though Keras numbers the seed generators of a clone anew."""
    model = training.build_model(_recipe_with_dropout(), num_classes=4)
    model.optimizer.build(model.trainable_variables)
    copy = distribute._local_copy(model)
    originals = distribute._variables_to_save(model)
    copied = distribute._variables_to_save(copy)
    assert len(copied) == len(originals)
    for original, variable in zip(originals, copied):
        assert variable is not original
        assert (tuple(variable.shape), variable.dtype) == (tuple(original.shape),
                                                           original.dtype), original.path
    assert sum("seed_generator" in variable.path for variable in copied) == 2
    assert distribute._saved_variable_names(copy) == distribute._saved_variable_names(model)
    # The input statistics of the weights travel with the copy that is saved.
    model.pixel_mean, model.pixel_std = (122.7, 116.7, 104.0), (1.0, 1.0, 1.0)
    copy = distribute._local_copy(model)
    assert (copy.pixel_mean, copy.pixel_std) == (model.pixel_mean, model.pixel_std)


def test_the_copy_to_save_is_checked_against_the_model():
    """Variables are named by the layers that own them: two models of one
    architecture agree, whatever their seed generators are called; another
    architecture does not."""
    names = distribute._saved_variable_names(training.build_model(_recipe_with_dropout(), 4))
    assert names == distribute._saved_variable_names(
        training.build_model(_recipe_with_dropout(), 4))
    assert "alexnet/drop6/seed_generator_state" in names
    other = distribute._saved_variable_names(
        training.build_model(_recipe_with_dropout(dropout=0.0), 4))
    assert other != names and "alexnet/drop6/seed_generator_state" not in other


# Process 0 fails while writing the model (as a full disk would).
FAILS_WHILE_WRITING = """
import keras
from keras_alexnet import distribute
distribute.initialize_processes(distribute.resolve_processes(), timeout=60,
                                heartbeat_timeout=10)
model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2),
                          keras.layers.Dropout(0.5)])
model.compile(optimizer="sgd", loss="mse")
model.optimizer.build(model.trainable_variables)
with distribute.ModelWriter(model).latest() as saved:
    if saved is not None:
        raise OSError("No space left on device")
distribute.wait_for_every_process("after writing")
print("went on")
"""


@jax_only
def test_an_error_while_process_0_writes_stops_every_process_with_it():
    """Not only process 0: the others raise its error at once, rather than going on
    to fail later as if it had been lost."""
    port = _free_port()
    processes = [subprocess.Popen([sys.executable, "-c", FAILS_WHILE_WRITING], cwd=ROOT,
                                  env=_process_environment(index, port),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for index in range(2)]
    (writer, out0, errors0), (other, out1, errors1) = _finish(processes, timeout=120)
    assert "went on" not in out0 + out1
    assert writer.returncode == 1 and "OSError: No space left on device" in errors0, errors0
    assert other.returncode == 1, errors1[-3000:]
    assert ("RuntimeError: Process 0 of 2 could not write the model, so every process stops: "
            "process 0 stopped: OSError: No space left on device") in errors1
