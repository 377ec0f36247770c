"""The tf.data service: a dispatcher and two workers on localhost make the training batches."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_alexnet import data, data_service, training
from keras_alexnet.data import folder as folder_module
from keras_alexnet.presets import TrainPreset

ROOT = Path(__file__).resolve().parents[1]
IMAGES, CLASSES = 48, 3
# Lighting off and normalisation the identity: a crop's pixels are its image's colour.
PLAIN = dict(flip_probability=0.0, lighting_std=0.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


@pytest.fixture(scope="module")
def numbered(tmp_path_factory):
    """48 solid-colour PNGs whose red value tells which one it is (5 x its number)."""
    root = tmp_path_factory.mktemp("numbered") / "images"
    for number in range(IMAGES):
        label = number % CLASSES
        (root / f"class{label}").mkdir(parents=True, exist_ok=True)
        pixels = np.full((20, 20, 3), (5 * number, 80 * label, 40), np.uint8)
        Image.fromarray(pixels).save(root / f"class{label}" / f"{number:02d}.png")
    return root


@pytest.fixture(scope="module")
def numbered_prepared(numbered, tmp_path_factory):
    target = tmp_path_factory.mktemp("numbered_prepared") / "prepared"
    data.prepare(data.image_folder(numbered, validation_fraction=0), target, size=20,
                 images_per_shard=2, log=lambda line: None)
    return data.prepared(target)


def _numbers(images):
    """Each crop's image number, read back from its red value."""
    return np.round(images[:, :, :, 0].mean(axis=(1, 2)) * 255 / 5).astype(int).tolist()


def _epochs(stream, epochs, steps):
    """`epochs` lists of the image numbers and labels the stream's batches hold."""
    batches = [(images.numpy(), labels.numpy()) for images, labels in
               stream.take(epochs * steps)]
    assert all(images.shape == (8, 12, 12, 3) for images, _ in batches)
    return [(sum((_numbers(images) for images, _ in batches[start:start + steps]), []),
             np.concatenate([labels for _, labels in batches[start:start + steps]]).tolist())
            for start in range(0, epochs * steps, steps)]


@pytest.mark.backend_independent
def test_each_epoch_reads_every_example_exactly_once(service, numbered, numbered_prepared,
                                                     monkeypatch):
    # Units of 4 files, so that two workers share the folder's 48.
    monkeypatch.setattr(folder_module, "FILES_PER_UNIT", 4)
    preset = TrainPreset(crop_size=12, resize_size=20, **PLAIN)
    for source in (data.image_folder(numbered, validation_fraction=0), numbered_prepared):
        stream = preset.epochs(source, batch_size=8, seed=0, data_service=service)
        epochs = _epochs(stream, epochs=2, steps=IMAGES // 8)
        for numbers, labels in epochs:
            assert sorted(numbers) == list(range(IMAGES)), source.name
            assert labels == [number % CLASSES for number in numbers]
        assert epochs[0][0] != epochs[1][0]  # each epoch in its own order


def test_model_fit_trains_on_the_service_batches(service, numbered, tmp_path):
    data.prepare(data.image_folder(numbered, validation_fraction=0.25), tmp_path / "prepared",
                 size=72, images_per_shard=4, log=lambda line: None)
    source = data.prepared(tmp_path / "prepared")
    recipe = training.Recipe(image_size=67, resize_size=72, batch_size=6, epochs=2,
                             initialization="he", seed=0)
    train, validation, steps, _ = training.make_datasets(recipe, source, data_service=service)
    assert steps == source.counts["train"] // 6
    model = training.build_model(recipe, source.num_classes)
    history = model.fit(train, steps_per_epoch=steps, epochs=2, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"]).all() and len(history.history["loss"]) == 2
    # Validation stays on the trainer, every image once.
    assert sum(len(labels) for _, labels in validation) == source.counts["validation"]


@pytest.mark.backend_independent
def test_processes_sharing_the_epoch_jobs_each_read_their_own_part(service):
    """Two readers of one run's jobs, as two training processes would be: between them
    they read each example of each epoch once, and neither reads the other's."""
    def numbered_epoch(epoch):  # 48 examples; each tells its epoch and number
        return tf.data.Dataset.range(IMAGES).map(lambda number: 100 * epoch + number).batch(4)

    jobs = data_service.EpochJobs(service, processes=2)
    readers = [iter(data_service.distribute_epochs(numbered_epoch, jobs, 4, IMAGES))
               for _ in range(2)]
    read = [[], []]
    for _ in range(IMAGES // 4):  # two epochs' batches in all, the readers taking turns
        for reader, numbers in zip(readers, read):
            numbers.extend(next(reader).numpy().tolist())
    examples = read[0] + read[1]
    assert len(set(examples)) == len(examples)  # neither read what the other did
    # The first epoch is whole; a reader that prefetched ahead may have left a
    # few of the second's to the other, which then started the third.
    assert set(range(IMAGES)) <= set(examples)
    assert all(example % 100 < IMAGES for example in examples)
    # A reader of its own jobs (another run, or a run resumed) starts from the first example.
    alone = iter(data_service.distribute_epochs(numbered_epoch, service, 4, IMAGES))
    assert sorted(sum((next(alone).numpy().tolist() for _ in range(IMAGES // 4)), [])) == (
        list(range(IMAGES)))


@pytest.mark.backend_independent
def test_each_process_gets_its_part_of_the_global_batch(service, numbered_prepared):
    recipe = training.Recipe(image_size=12, resize_size=20, batch_size=8)
    jobs = data_service.EpochJobs(service, processes=2)
    train, _, steps, _ = training.make_datasets(recipe, numbered_prepared, data_service=jobs)
    assert steps == IMAGES // 8  # global steps: the processes step together
    assert next(iter(train))[0].shape == (4, 12, 12, 3)
    with pytest.raises(ValueError, match="does not divide over the 3 processes"):
        training.make_datasets(recipe, numbered_prepared,
                               data_service=data_service.EpochJobs(service, processes=3))
    with pytest.raises(ValueError, match="`processes` must be"):
        data_service.EpochJobs(service, processes=0)


@pytest.mark.backend_independent
def test_service_errors_are_clear_and_immediate(numbered_prepared):
    recipe = training.Recipe(image_size=12, resize_size=20, batch_size=8)
    with pytest.raises(ConnectionError, match="Cannot reach the tf.data service dispatcher"):
        training.make_datasets(recipe, numbered_prepared, data_service="grpc://localhost:1")
    with pytest.raises(ValueError, match="grpc://HOST:PORT"):
        training.make_datasets(recipe, numbered_prepared, data_service="http://localhost:80")
    no_units = data.Source(splits={"train": data.Split(count=48, read=None)},
                           class_names=["a"], name="a TFDS dataset")
    with pytest.raises(ValueError, match="prepare it first"):
        TrainPreset(crop_size=12, resize_size=20).epochs(
            no_units, batch_size=8, data_service="grpc://localhost:1")


def _free_port():
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


@pytest.fixture
def start_server(tmp_path):
    """Starts `python -m keras_alexnet.data_service ...` and waits until it listens.

    Its standard error goes to `process.log`. Whatever is still running at
    the end of the test is killed.
    """
    started = []

    def start(*arguments):
        log = tmp_path / f"server{len(started)}.log"
        with open(log, "w") as errors:
            process = subprocess.Popen(
                [sys.executable, "-m", "keras_alexnet.data_service", *arguments], cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                stderr=errors, text=True)
        process.log = log
        started.append(process)
        line = process.stdout.readline()
        assert "listening on" in line, line
        return process

    yield start
    for process in started:
        process.kill()
        process.wait()


def _worker_arguments(dispatcher_port, port):
    return ("worker", "--dispatcher", f"localhost:{dispatcher_port}", "--port", str(port),
            "--host", "localhost")


def _stop(*processes):
    """Ctrl-C to each server; their exit statuses, or the end of their logs if still running."""
    for process in processes:
        process.send_signal(signal.SIGINT)
    statuses = []
    for process in processes:
        try:
            statuses.append(process.wait(timeout=60))
        except subprocess.TimeoutExpired:
            statuses.append(f"still running 60 s after Ctrl-C; its log ends: "
                            f"{process.log.read_text()[-2000:]!r}")
    return statuses


SERVE_SCRIPT = """
import sys, threading
from keras_alexnet import data_service

class Server:  # whose stop waits for an open request that is never answered
    def stop(self):
        threading.Event().wait()

sys.exit(data_service.serve_until_stopped(Server(), "serving", stop_timeout=2))
"""


@pytest.mark.backend_independent
@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_a_server_that_cannot_stop_cleanly_still_ends(signal_number):
    server = subprocess.Popen([sys.executable, "-c", SERVE_SCRIPT], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline() == "serving\n"
        server.send_signal(signal_number)
        _, errors = server.communicate(timeout=60)
    finally:
        server.kill()
    assert server.returncode == 0
    assert "requests still open 2 s after it was asked to stop" in errors


@pytest.mark.backend_independent
def test_a_lost_worker_restarted_at_its_address_lets_the_epoch_end(
        numbered_prepared, start_server, capfd):
    dispatcher = data_service.start_dispatcher(0, worker_timeout=2)
    dispatcher_port = int(dispatcher.target.rsplit(":", 1)[1])
    ports = [_free_port(), _free_port()]
    workers = [start_server(*_worker_arguments(dispatcher_port, port)) for port in ports]
    preset = TrainPreset(crop_size=12, resize_size=20, **PLAIN)
    iterator = iter(preset.epochs(numbered_prepared, batch_size=8, seed=0,
                                  data_service=dispatcher.target))
    received = [next(iterator)]
    workers[1].send_signal(signal.SIGKILL)  # lost mid-epoch, whatever it held
    workers[1].wait()
    workers[1] = start_server(*_worker_arguments(dispatcher_port, ports[1]))  # back

    def read_on():  # the rest of this epoch and all of the next
        received.extend(next(iterator) for _ in range(2 * IMAGES // 8 - 1))

    reader = threading.Thread(target=read_on, daemon=True)
    reader.start()
    reader.join(timeout=240)
    finished = not reader.is_alive()
    assert _stop(*workers) == [0, 0]
    dispatcher.stop()
    assert finished, "training kept waiting for the lost worker after it came back"
    # What the lost worker held when it was killed (if anything) is not read
    # again: the epoch then comes short, and says so.
    message = re.search(r"data epoch 0 from the tf.data service delivered (\d+) of 48 "
                        r"examples", capfd.readouterr().err)
    delivered = int(message.group(1)) if message else IMAGES
    numbers = sum((_numbers(images.numpy()) for images, _ in received), [])
    end_of_first = delivered // 8 * 8  # its full batches; then the next epoch begins
    first, second = numbers[:end_of_first], numbers[end_of_first:end_of_first + IMAGES]
    assert len(set(first)) == len(first)  # never twice
    if not message:
        assert sorted(first) == list(range(IMAGES))
    assert sorted(second) == list(range(IMAGES))


@pytest.mark.backend_independent
def test_train_py_on_command_line_servers_stops_when_a_worker_is_lost_for_good(
        numbered, start_server, tmp_path):
    dispatcher_port = _free_port()
    dispatcher = start_server("dispatcher", "--port", str(dispatcher_port),
                              "--worker-timeout", "2")
    workers = [start_server(*_worker_arguments(dispatcher_port, _free_port()))
               for _ in range(2)]
    prepared, output = tmp_path / "prepared", tmp_path / "run"
    data.prepare(data.image_folder(numbered, validation_fraction=0.25), prepared,
                 size=72, images_per_shard=4, log=lambda line: None)
    training_run = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), "--backend", keras.backend.backend(),
         "--data", str(prepared), "--data-service", f"grpc://localhost:{dispatcher_port}",
         # Long enough for the first batch's compilation on a loaded machine.
         "--service-timeout", "40", "--output", str(output), "--epochs", "4",
         "--image-size", "67", "--resize-size", "72", "--batch-size", "6", "--init", "he",
         "--quiet", "--seed", "0"],
        cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in training_run.stdout:  # the first epoch ends normally
            lines.append(line)
            if line.startswith("epoch 1/4"):
                break
        assert any("Training batches from the tf.data service" in line for line in lines)
        workers[1].send_signal(signal.SIGKILL)  # and never comes back
        _, stderr = training_run.communicate(timeout=300)
    finally:
        training_run.kill()
    assert _stop(dispatcher, workers[0]) == [0, 0]
    assert training_run.returncode == data_service.EXIT_STALLED, stderr[-3000:]
    assert "no training batch came from the tf.data service" in stderr
    assert "continue with --resume" in stderr
    checkpoint = json.loads((output / "backup" / "checkpoint.json").read_text())
    assert checkpoint["epoch"] >= 1 and not (output / "summary.json").exists()
