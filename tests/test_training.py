"""train.py end to end in subprocesses, resume after SIGKILL, distribution, errors."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from keras_alexnet import training

ROOT = Path(__file__).resolve().parents[1]
BACKEND = keras.backend.backend()
COLOURS = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}
FAST = ["--validation-fraction", "0.25", "--image-size", "67", "--resize-size", "72",
        "--batch-size", "16", "--init", "he", "--lr", "0.003", "--quiet", "--seed", "0"]


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory):
    """Three classes told apart by colour, with noise and random blobs."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        (root / name).mkdir()
        for index in range(24):
            pixels = np.array(colour, float) + rng.normal(0, 30, (80, 80, 3))
            top, left = rng.integers(0, 60, 2)
            pixels[top:top + 20, left:left + 20] = rng.uniform(0, 255, 3)
            image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            image.save(root / name / f"{index}.jpg")
    return root


def run_train(*arguments, backend=BACKEND, env=None):
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--backend", backend, *arguments],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})},
    )


def test_train_end_to_end(colour_folder, tmp_path):
    output = tmp_path / "run"
    export = tmp_path / "export" / "1"
    result = run_train("--data", str(colour_folder), "--epochs", "4", "--steps-per-epoch",
                       "10", "--output", str(output), "--export", str(export), *FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Keras backend: {BACKEND}" in result.stdout
    assert result.stdout.count("epoch ") >= 4  # one summary line per epoch
    summary = json.loads((output / "summary.json").read_text())
    assert summary["backend"] == BACKEND and summary["epochs"] == 4
    assert summary["examples"] == 18  # 25% of 72 held out
    assert summary["top1_error"] < 1 - 1 / 3 - 0.1, summary  # clearly above chance
    assert 0 <= summary["top5_error"] <= summary["top1_error"]
    assert summary["images_per_second"] > 0 and summary["wall_time_seconds"] > 0
    for name in ("final.keras", "best.keras", "log.csv", "run.json", "backup", "tensorboard"):
        assert (output / name).exists(), name
    with open(output / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2, 3]
    assert (export / "saved_model.pb").exists()
    assert (export / "assets" / "class_names.txt").read_text().split() == sorted(COLOURS)
    # The folder now holds a finished run: starting again needs --resume or --overwrite.
    again = run_train("--data", str(colour_folder), "--output", str(output), *FAST)
    assert again.returncode == 2 and "finished run" in again.stderr
    assert json.loads((output / "summary.json").read_text()) == summary


def test_killed_run_resumes_and_completes(colour_folder, tmp_path):
    output = tmp_path / "run"
    arguments = ["--data", str(colour_folder), "--epochs", "4", "--steps-per-epoch", "6",
                 "--output", str(output), *FAST]
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), "--backend", BACKEND, *arguments],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    metadata = output / "backup" / "training_metadata.json"
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if metadata.exists() and json.loads(metadata.read_text() or "{}").get("epoch", 0) >= 1:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (output / "summary.json").exists()
    refused = run_train(*arguments)
    assert refused.returncode == 2 and "unfinished run" in refused.stderr

    resumed = run_train(*arguments, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming" in resumed.stdout and "at epoch 1 of 4" not in resumed.stdout
    summary = json.loads((output / "summary.json").read_text())
    assert summary["epochs"] == 4
    with open(output / "log.csv") as handle:
        epochs = [int(row["epoch"]) for row in csv.DictReader(handle)]
    assert epochs[-1] == 3 and sorted(set(epochs)) == [0, 1, 2, 3]


def test_nan_loss_stops_with_exit_3_and_saves_no_bad_checkpoint(colour_folder, tmp_path):
    output = tmp_path / "run"
    result = run_train("--data", str(colour_folder), "--epochs", "2", "--steps-per-epoch", "3",
                       "--output", str(output), *FAST, "--lr", "1e12")
    assert result.returncode == 3, result.stderr[-2000:]
    assert "loss became" in result.stderr and "last good checkpoint" in result.stderr
    # The NaN epoch never reached the epoch-end callbacks: no checkpoint of NaN weights.
    assert not (output / "backup" / "latest.weights.h5").exists()
    assert not (output / "summary.json").exists()


@pytest.mark.parametrize("arguments,message", [
    (["--data", "/no/such/folder"], "no such folder"),
    (["--epochs", "0"], "epochs"),
    (["--lr", "-1"], "learning_rate"),
    (["--dropout", "1.5"], "dropout"),
    (["--image-size", "300", "--resize-size", "256"], "resize_size"),
    (["--resume"], "Nothing to resume"),
    (["--resume", "--overwrite"], "not both"),
])
def test_errors_exit_2_and_write_nothing(tmp_path, arguments, message):
    output = tmp_path / "run"
    result = run_train("--output", str(output), *arguments)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert not output.exists()


def test_unknown_backend_and_unwritable_output(tmp_path):
    result = run_train("--output", str(tmp_path / "run"), backend="theano")
    assert result.returncode == 2 and "theano" in result.stderr
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run_train("--output", str(blocker / "run"))
    assert result.returncode == 2 and "not a writable folder" in result.stderr
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    result = run_train("--output", str(foreign), "--overwrite")
    assert result.returncode == 2 and "not a keras-alexnet run folder" in result.stderr
    assert (foreign / "notes.txt").read_text() == "mine"


@pytest.mark.skipif(BACKEND != "torch", reason="the torch backend's distribution error")
def test_torch_distribution_is_a_clear_error(tmp_path):
    result = run_train("--output", str(tmp_path / "run"), "--distribute", "mirrored")
    assert result.returncode == 2 and "no distribution API" in result.stderr
    assert not (tmp_path / "run").exists()


def test_recipe_defaults_are_the_paper():
    recipe = training.Recipe()
    assert (recipe.batch_size, recipe.learning_rate, recipe.momentum, recipe.weight_decay,
            recipe.epochs, recipe.dropout, recipe.initialization, recipe.image_size) == (
        128, 0.01, 0.9, 5e-4, 90, 0.5, "paper", 227)


def test_weight_decay_is_the_paper_update_rule():
    """One SGD step equals v = -lr * (g + wd * w) computed by hand (momentum empty)."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, use_bias=False)])
    training.apply_weight_decay(model, 0.1)
    model.compile(keras.optimizers.SGD(0.5, momentum=0.9), "mse")
    kernel = keras.ops.convert_to_numpy(model.weights[0]).copy()
    x, y = np.ones((1, 3), "float32"), np.zeros((1, 2), "float32")
    model.train_on_batch(x, y)
    gradient = (2 / 2) * x.T @ (x @ kernel - y)  # d mean((xW - y)^2) / dW
    expected = kernel - 0.5 * (gradient + 0.1 * kernel)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model.weights[0]), expected,
                               rtol=1e-5)


def test_plateau_schedule_divides_by_ten_three_times_and_persists(tmp_path):
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.01), "mse")
    schedule = PlateauSchedule = training.PlateauSchedule(tmp_path / "s.json", patience=2)
    schedule.set_model(model)
    schedule.on_train_begin()
    rates = []
    for epoch, score in enumerate([0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]):
        logs = {"val_top1": score}
        schedule.on_epoch_end(epoch, logs)
        rates.append(round(logs["learning_rate"], 8))
    assert rates == [0.01, 0.01, 0.01, 0.001, 0.001, 1e-4, 1e-4, 1e-5, 1e-5, 1e-5]
    restored = PlateauSchedule.__class__(tmp_path / "s.json", patience=2)
    restored.on_train_begin()
    assert restored.state["drops"] == 3 and restored.state["best"] == pytest.approx(0.6)


def test_train_turns_tensorflow_onednn_on_unless_the_user_chose(monkeypatch):
    import train

    _, args = train.parse_arguments([])
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    train.configure_environment(args)
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1"
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    train.configure_environment(args)
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"
