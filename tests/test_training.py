"""train.py end to end in subprocesses, resume after SIGKILL, distribution, errors."""

import csv
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

import train as train_script
from keras_alexnet import AlexNet, data, training
from keras_alexnet.run_folder import RunFolder
from tests.caffe_reference import bvlc_alexnet_layers, random_weights, write_caffemodel
from tests.helpers import write_colour_folder

ROOT = Path(__file__).resolve().parents[1]
BACKEND = keras.backend.backend()
COLOURS = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}
FAST = ["--validation-fraction", "0.25", "--image-size", "67", "--resize-size", "72",
        "--batch-size", "16", "--init", "he", "--lr", "0.003", "--quiet", "--seed", "0"]


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory):
    """Three classes told apart by colour, with noise and random blobs."""
    return write_colour_folder(tmp_path_factory.mktemp("colours"), COLOURS, 24)


def run_train(*arguments, backend=BACKEND, env=None, cwd=ROOT):
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--backend", backend, *arguments],
        cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})},
    )


def final_weights(run_folder):
    model = keras.saving.load_model(run_folder / "final.keras")
    return [keras.ops.convert_to_numpy(weight) for weight in model.weights]


def log_rows(run_folder):
    with open(run_folder / "log.csv") as handle:
        return list(csv.DictReader(handle))


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
    common = ["--data", str(colour_folder), "--epochs", "4", "--steps-per-epoch", "6", *FAST]
    arguments = [*common, "--output", str(output)]
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), "--backend", BACKEND, *arguments],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        checkpoint = RunFolder(output).read_checkpoint()
        if checkpoint and checkpoint["epoch"] >= 1:
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
    assert "Resuming" in resumed.stdout and "after epoch 0 of 4" not in resumed.stdout
    summary = json.loads((output / "summary.json").read_text())
    assert summary["epochs"] == 4
    # One row per epoch, even if the kill fell between a row and its checkpoint.
    assert [int(row["epoch"]) for row in log_rows(output)] == [0, 1, 2, 3]
    # The resumed run ends with the weights of an uninterrupted one (seeded, exact data order).
    uninterrupted = tmp_path / "uninterrupted"
    whole = run_train(*common, "--output", str(uninterrupted))
    assert whole.returncode == 0, whole.stderr[-3000:]
    for resumed_weight, whole_weight in zip(final_weights(output), final_weights(uninterrupted)):
        np.testing.assert_allclose(resumed_weight, whole_weight, rtol=1e-5, atol=1e-6)


def test_nan_loss_stops_with_exit_3_and_saves_no_bad_checkpoint(colour_folder, tmp_path):
    output = tmp_path / "run"
    result = run_train("--data", str(colour_folder), "--epochs", "2", "--steps-per-epoch", "3",
                       "--output", str(output), *FAST, "--lr", "1e12")
    assert result.returncode == 3, result.stderr[-2000:]
    assert "loss became" in result.stderr
    # The NaN epoch never reached the epoch-end callbacks: no checkpoint of NaN weights,
    # and the message says so rather than pointing at a backup that does not exist.
    assert "No epoch had finished, so no checkpoint was kept" in result.stderr
    assert RunFolder(output).read_checkpoint() is None
    assert not (output / "summary.json").exists()


def test_after_a_nan_loss_the_run_continues_at_a_lower_rate_from_its_checkpoint(
        colour_folder, tmp_path):
    output = tmp_path / "run"
    arguments = ["--data", str(colour_folder), "--steps-per-epoch", "3", "--output", str(output),
                 *FAST]
    first = run_train(*arguments, "--epochs", "1")
    assert first.returncode == 0, first.stderr[-2000:]
    diverged = run_train(*arguments, "--epochs", "2", "--resume", "--lr", "1e12")
    assert diverged.returncode == 3, diverged.stderr[-2000:]
    assert "The checkpoint after epoch 1 is kept" in diverged.stderr
    assert f"--output {output} --resume --lr RATE" in diverged.stderr
    assert RunFolder(output).read_checkpoint()["epoch"] == 1

    lower = run_train(*arguments, "--epochs", "2", "--resume", "--lr", "0.001")
    assert lower.returncode == 0, lower.stderr[-2000:]
    assert "Learning rate 0.001 from epoch 2 on (run.json had 1e+12" in lower.stdout
    rates = [float(row["learning_rate"]) for row in log_rows(output)]
    assert rates == [pytest.approx(0.003), pytest.approx(0.001)]
    assert json.loads((output / "run.json").read_text())["recipe"]["learning_rate"] == 0.001


@pytest.mark.backend_independent
@pytest.mark.parametrize("arguments,message", [
    (["--data", "/no/such/folder"], "no such folder"),
    (["--epochs", "0"], "epochs"),
    (["--lr", "-1"], "--lr must be > 0"),
    (["--dropout", "1.5"], "dropout"),
    (["--image-size", "300", "--resize-size", "256"], "resize_size"),
    (["--resume"], "Nothing to resume"),
    (["--resume", "--overwrite"], "not both"),
])
def test_errors_exit_2_and_write_nothing(tmp_path, capsys, arguments, message):
    output = tmp_path / "run"
    # train.py's main in this process (the checks fail before any model is built).
    assert train_script.main(["--output", str(output), *arguments]) == 2
    assert message in capsys.readouterr().err
    assert not output.exists()


@pytest.mark.backend_independent
def test_a_missing_optional_dependency_exits_2_and_writes_nothing(colour_folder, tmp_path):
    """`--policy randaugment` without keras-cv: a one-line error, not a traceback."""
    output = tmp_path / "run"
    # train.py run as a script, in a process where `import keras_cv` fails.
    without_keras_cv = ("import runpy, sys; sys.modules['keras_cv'] = None; "
                        "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], "
                        "run_name='__main__')")
    result = subprocess.run(
        [sys.executable, "-c", without_keras_cv, str(ROOT / "train.py"), "--backend", BACKEND,
         "--data", str(colour_folder), "--output", str(output), "--epochs", "1", *FAST,
         "--policy", "randaugment"],
        cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error: policy='randaugment' needs keras-cv" in result.stderr
    assert "Traceback" not in result.stderr
    assert not output.exists()


@pytest.mark.backend_independent
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


def _tree(folder):
    return {str(path.relative_to(folder)): path.read_bytes() if path.is_file() else None
            for path in sorted(folder.rglob("*"))}


@pytest.mark.backend_independent
def test_overwrite_deletes_only_a_keras_alexnet_runs_own_files(tmp_path):
    # Another tool's folder that happens to hold a run.json is not ours.
    other = tmp_path / "other_tool"
    (other / "artifacts").mkdir(parents=True)
    (other / "run.json").write_text('{"recipe": {}, "model": "resnet"}')
    (other / "metrics.json").write_text("{}")
    (other / "artifacts" / "model.bin").write_bytes(b"weights")
    before = _tree(other)
    result = run_train("--output", str(other), "--overwrite")
    assert result.returncode == 2 and "not a keras-alexnet run folder" in result.stderr
    assert _tree(other) == before

    # Our run, with every kind of file a run writes (a killed run's temporary files too).
    run = RunFolder(tmp_path / "ours")
    run.create()
    run.write_settings({"recipe": {}})
    written = ["log.csv", "log.csv.tmp", "best.keras", "best.json", "final.keras",
               "summary.json", "skipped_files.txt", "backup/checkpoint.json",
               "backup/checkpoint.json.tmp", "backup/epoch-0002.weights.h5",
               "backup/epoch-0003.weights.h5.partial.weights.h5", "backup/partial-best.keras",
               "backup/best.keras", "backup/best.json", "backup/best.json.tmp",
               "tensorboard/train/events.out.tfevents.1796699556.host.23982.0.v2",
               "tensorboard/validation/events.out.tfevents.1796699557.host.23982.1.v2",
               "tensorboard/validation/events.out.tfevents.1796699557.host.23982.1.v2.tmp"]
    for name in written:
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_bytes(b"run")
    # Something of the user's added, at any level: refused, named, and nothing deleted.
    users = {"my_notes.txt": "my_notes.txt", "backup/NOTES.txt": "backup/NOTES.txt",
             "tensorboard/mine/keep.txt": "tensorboard/mine",
             "tensorboard/train/notes.txt": "tensorboard/train/notes.txt"}
    for name in users:
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("mine")
    before = _tree(run.path)
    result = run_train("--output", str(run.path), "--overwrite")
    assert result.returncode == 2, result.stderr[-3000:]
    assert repr(sorted(users.values())) in result.stderr
    assert _tree(run.path) == before
    with pytest.raises(training.RunFolderError, match=re.escape(repr(sorted(users.values())))):
        run.create(overwrite=True)
    assert _tree(run.path) == before
    for name in users:
        (run / name).unlink()
    (run / "tensorboard" / "mine").rmdir()
    run.create(overwrite=True)
    assert list(run.path.iterdir()) == []


@pytest.mark.backend_independent
def test_overwrite_with_export_never_replaces_a_serving_folder(colour_folder, tmp_path):
    serving = tmp_path / "serving"
    (serving / "1").mkdir(parents=True)
    (serving / "1" / "saved_model.pb").write_bytes(b"v1")
    (serving / "README").write_text("models")
    before = _tree(serving)
    result = run_train("--data", str(colour_folder), "--output", str(tmp_path / "run"),
                       "--overwrite", "--export", str(serving), *FAST)
    assert result.returncode == 2 and "not a SavedModel" in result.stderr
    assert str(serving / "2") in result.stderr  # where a new version would go
    assert _tree(serving) == before
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.backend_independent
def test_skipped_files_are_named_in_the_run_and_do_not_stop_it(tmp_path):
    images = write_colour_folder(tmp_path / "images", COLOURS, 8)
    good = (images / "red" / "0.jpg").read_bytes()
    corrupt = images / "red" / "corrupt.jpg"
    corrupt.write_bytes(good[: len(good) // 3])  # met by the pipeline
    not_utf8 = os.path.join(os.fsencode(images / "green"), b"caf\xe9.jpg")
    with open(not_utf8, "wb") as handle:  # left out when the folder is listed
        handle.write(good)
    output = tmp_path / "run"
    result = run_train("--data", str(images), "--output", str(output), "--epochs", "1", *FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (f"warning: skipped 1 file(s) that could not be decoded as images (listed in "
            f"{output / 'skipped_files.txt'}): {corrupt}") in result.stdout
    assert "1 file(s) were left out when the source was listed" in result.stdout
    named = (output / "skipped_files.txt").read_bytes().splitlines()
    assert sorted(named) == sorted([os.fsencode(corrupt), not_utf8])
    summary = json.loads((output / "summary.json").read_text())
    assert sorted(map(os.fsencode, summary["skipped_files"])) == sorted(named)
    assert summary["examples"] > 0


@pytest.mark.backend_independent
def test_fewer_than_one_batch_is_refused_with_steps_per_epoch_too(colour_folder, tmp_path):
    output = tmp_path / "run"
    result = run_train("--data", str(colour_folder), "--output", str(output), *FAST,
                       "--batch-size", "64", "--steps-per-epoch", "2")
    assert result.returncode == 2 and "fewer than one batch" in result.stderr
    assert not output.exists()  # not even run.json: the corrected command is not refused
    again = run_train("--data", str(colour_folder), "--output", str(output), *FAST,
                      "--epochs", "1", "--steps-per-epoch", "1")
    assert again.returncode == 0, again.stderr[-2000:]


def test_seeded_runs_repeat_exactly(colour_folder, tmp_path):
    arguments = ["--data", str(colour_folder), "--epochs", "2", "--steps-per-epoch", "2",
                 *FAST]
    first = run_train(*arguments, "--output", str(tmp_path / "a"))
    second = run_train(*arguments, "--output", str(tmp_path / "b"))
    assert first.returncode == 0 and second.returncode == 0, second.stderr[-2000:]
    for a, b in zip(final_weights(tmp_path / "a"), final_weights(tmp_path / "b")):
        np.testing.assert_array_equal(a, b)
    rows_a, rows_b = log_rows(tmp_path / "a"), log_rows(tmp_path / "b")
    assert rows_a == rows_b


@pytest.mark.backend_independent
def test_seeded_data_does_not_depend_on_an_earlier_run_in_the_process(colour_folder):
    """A seeded run leaves the global seeds set (`keras.utils.set_random_seed`), and
    tf.data shuffles combine TensorFlow's with their own (and fail on the presets'
    per-epoch seeds while it is 0): the next run still gets a fresh process's data."""
    source = data.image_folder(colour_folder, validation_fraction=0.25)
    recipe = training.Recipe(image_size=67, resize_size=72, batch_size=16, seed=0)
    first_batches = []
    for earlier_seed in (0, 1):
        keras.utils.set_random_seed(earlier_seed)
        train, _, _, _ = training.make_datasets(recipe, source)
        first_batches.append([np.asarray(part) for part in next(iter(train))])
    for a, b in zip(*first_batches):
        np.testing.assert_array_equal(a, b)


# A distribution over two CPU devices on each backend that has one.
TWO_DEVICES = {"tensorflow": ["--distribute", "mirrored", "--cpu-devices", "2"],
               "jax": ["--distribute", "data-parallel", "--cpu-devices", "2"]}


def test_resume_takes_its_settings_from_run_json(colour_folder, tmp_path):
    output, export = tmp_path / "run", tmp_path / "export"
    distribution = TWO_DEVICES.get(BACKEND, [])
    started = run_train("--data", str(colour_folder), "--output", str(output), *FAST,
                        "--epochs", "1", "--steps-per-epoch", "2", "--export", str(export),
                        *distribution)
    assert started.returncode == 0, started.stderr[-2000:]
    exported = (export / "saved_model.pb").stat().st_mtime_ns
    changed = run_train("--output", str(output), "--resume", "--image-size", "99",
                        "--dropout", "0.2", "--lr", "0.1", "--epochs", "2")
    assert changed.returncode == 2
    assert "--image-size: 67 -> 99" in changed.stderr and "--dropout: 0.5 -> 0.2" in changed.stderr
    assert "--lr" not in changed.stderr  # a resumed run may change its learning rate
    assert len(changed.stderr) < 2000  # no Keras internals
    finished = run_train("--output", str(output), "--resume")
    assert finished.returncode == 2 and "pass more than 1 --epochs" in finished.stderr
    # The default spelled out is what the run trains with: no change.
    more = run_train("--output", str(output), "--resume", "--epochs", "2", "--quiet",
                     "--variant", "original")
    assert more.returncode == 0, more.stderr[-2000:]
    assert "Continuing to 2 epochs (the run started with 1)" in more.stdout
    assert [int(row["epoch"]) for row in log_rows(output)] == [0, 1]
    summary = json.loads((output / "summary.json").read_text())
    assert summary["epochs"] == 2
    # The run's own distribution and export; its devices were of one start.
    settings = json.loads((output / "run.json").read_text())
    assert settings["distribute"] == (distribution[1] if distribution else "none")
    assert settings["export"] == summary["export"] == str(export)
    assert settings["counts"] == {"train": 54, "validation": 18}
    assert (export / "saved_model.pb").stat().st_mtime_ns > exported
    if distribution:
        assert ("Training on 1 replica(s) over 1 process(es) (the previous start had 2 over "
                "1).") in more.stdout
        assert summary["replicas"] == 1


@pytest.mark.backend_independent
def test_resume_refuses_another_distribution_or_export():
    settings = {"distribute": "data-parallel", "model_parallel": None, "export": "/exports/1"}
    _, args = train_script.parse_arguments(["--output", "run", "--resume"])
    train_script.take_run_arguments(args, settings, ["distribute", "model_parallel", "export"])
    assert (args.distribute, args.model_parallel, args.export) == (
        "data-parallel", None, "/exports/1")
    _, args = train_script.parse_arguments(["--output", "run", "--resume", "--distribute",
                                            "none", "--export", "/exports/1"])
    with pytest.raises(ValueError, match=r"--distribute: 'data-parallel' -> 'none'\. "):
        train_script.take_run_arguments(args, settings, ["distribute", "export"])
    # A run.json from before export was recorded leaves it as given.
    train_script.take_run_arguments(args, {}, ["export"])
    assert args.export == "/exports/1"


@pytest.mark.backend_independent
def test_each_run_gets_its_own_default_folder(colour_folder, tmp_path):
    arguments = ["--data", str(colour_folder), *FAST, "--epochs", "1", "--steps-per-epoch", "1"]
    for _ in range(2):
        result = run_train(*arguments, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
    folders = sorted((tmp_path / "runs").iterdir())
    assert len(folders) == 2 and all(folder.name.startswith("colours") for folder in folders)
    assert all((folder / "summary.json").exists() for folder in folders)


@pytest.mark.backend_independent
def test_demo_defaults_are_seeded_and_follow_the_image_size():
    images = data.Source(splits={}, class_names=["a", "b"])  # not prepared
    _, args = train_script.parse_arguments([])
    recipe = train_script.make_recipe(args, training, images)
    assert recipe.seed == 0 and (recipe.image_size, recipe.resize_size) == (67, 76)
    _, args = train_script.parse_arguments(["--image-size", "227"])
    assert train_script.make_recipe(args, training, images).resize_size == 256
    _, args = train_script.parse_arguments(["--data", "x", "--seed", "3"])
    recipe = train_script.make_recipe(args, training, images)
    assert (recipe.seed, recipe.image_size, recipe.resize_size) == (3, 227, 256)
    # Without --image-size, the variant's own input size (AlexNet's default input shape).
    for variant in ("one_weird_trick", "zfnet"):
        _, args = train_script.parse_arguments(["--data", "x", "--variant", variant])
        recipe = train_script.make_recipe(args, training, images)
        assert (recipe.image_size, recipe.resize_size) == (224, 256)
        assert AlexNet(variant=variant, weights=None).input_shape[1] == recipe.image_size


@pytest.mark.skipif(BACKEND != "torch", reason="the torch backend's distribution error")
def test_torch_distribution_is_a_clear_error(tmp_path):
    result = run_train("--output", str(tmp_path / "run"), "--distribute", "mirrored")
    assert result.returncode == 2 and "no distribution API" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def seven_validation_images(tmp_path_factory):
    """train/ with 66 images and val/ with 7 (3 + 2 + 2): not a multiple of anything."""
    root = tmp_path_factory.mktemp("split")
    rng = np.random.default_rng(1)
    for split, counts in (("train", (22, 22, 22)), ("val", (3, 2, 2))):
        for (name, colour), count in zip(COLOURS.items(), counts):
            (root / split / name).mkdir(parents=True)
            for index in range(count):
                pixels = np.array(colour, float) + rng.normal(0, 30, (40, 40, 3))
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
                    root / split / name / f"{index}.jpg")
    return root


@pytest.mark.parametrize("distribute,backend", [
    (["mirrored"], "tensorflow"),
    (["data-parallel"], "jax"),
    # A batch axis of 2 under the model-parallel layout, which splits the
    # activations' batch too: the last, partial batch must still divide.
    pytest.param(["model-parallel", "--model-parallel", "1"], "jax",
                 marks=pytest.mark.slow),
], ids=["mirrored", "data-parallel", "model-parallel"])
def test_distributed_validation_sees_every_image_once(seven_validation_images, tmp_path,
                                                      distribute, backend):
    if BACKEND != backend:
        pytest.skip(f"{distribute[0]} runs on the {backend} backend")
    for batch_size in ("8", "4"):  # smaller than one batch; a last partial batch
        output = tmp_path / batch_size
        result = run_train("--data", str(seven_validation_images), "--output", str(output),
                           *FAST, "--batch-size", batch_size, "--epochs", "1",
                           "--steps-per-epoch", "2", "--distribute", *distribute,
                           "--cpu-devices", "2")
        assert result.returncode == 0, result.stderr[-3000:]
        assert "ran out of data" not in result.stderr
        row = log_rows(output)[0]
        assert all(row[key] not in ("", "NA") for key in ("val_loss", "val_top1", "val_top5"))
        # Accuracy over 7 images is a multiple of 1/7.
        assert float(row["val_top1"]) * 7 == pytest.approx(round(float(row["val_top1"]) * 7))
        summary = json.loads((output / "summary.json").read_text())
        assert summary["examples"] == 7 and summary["replicas"] == 2


@pytest.mark.backend_independent
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


def test_plateau_schedule_divides_by_ten_three_times_and_logs_the_rate_trained_at():
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.01), "mse")
    schedule = training.PlateauSchedule(patience=2)
    schedule.set_model(model)
    logged, used = [], []
    for epoch, score in enumerate([0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]):
        schedule.on_epoch_begin(epoch)
        used.append(round(float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)), 8))
        logs = {"val_top1": score}
        schedule.on_epoch_end(epoch, logs)
        logged.append(round(logs["learning_rate"], 8))
    assert used == [0.01, 0.01, 0.01, 0.01, 0.001, 0.001, 1e-4, 1e-4, 1e-5, 1e-5]
    assert logged == used  # each row shows the rate its epoch trained at
    # The state travels in the checkpoint; a restored schedule continues it.
    restored = training.PlateauSchedule(patience=2, state=schedule.state)
    assert restored.state == {"best": pytest.approx(0.6), "wait": 2, "drops": 3,
                              "pending_drop": False}


def test_every_log_shows_the_rate_the_epoch_trained_at(tmp_path):
    """Keras' TensorBoard and CSVLogger, after the schedule, in train's order: the
    epoch that decides a drop is logged at the rate it trained at, in both."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.01), "mse")
    scores = iter([0.5, 0.4, 0.4, 0.4])

    class Score(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["val_top1"] = next(scores)

    schedule = training.PlateauSchedule(patience=1)
    rates = []
    trained_at = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: rates.append(
        float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))))
    model.fit(np.zeros((4, 1)), np.zeros((4, 1)), epochs=4, verbose=0, callbacks=[
        Score(), schedule, trained_at, keras.callbacks.CSVLogger(str(tmp_path / "log.csv")),
        keras.callbacks.TensorBoard(str(tmp_path / "tensorboard"))])
    assert rates == pytest.approx([0.01, 0.01, 0.001, 1e-4])
    assert [float(row["learning_rate"]) for row in log_rows(tmp_path)] == pytest.approx(rates)
    events = EventAccumulator(str(tmp_path / "tensorboard" / "train"), size_guidance={
        "tensors": 0}).Reload()
    logged = [float(make_ndarray(event.tensor_proto))
              for event in events.Tensors("epoch_learning_rate")]
    assert logged == pytest.approx(rates)


@pytest.mark.backend_independent
def _best_and_checkpoint(run):
    """A small model with a run's BestModel and RunCheckpoint callbacks, in train's order."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.01), "mse")
    model.optimizer.build(model.trainable_variables)
    callbacks = [training.BestModel(run, "val_top1"),
                 training.RunCheckpoint(run, training.PlateauSchedule())]
    for callback in callbacks:
        callback.set_model(model)
    return model, callbacks


def _end_epoch(model, callbacks, epoch, score):
    """Gives the model weights of its own for `epoch`, then ends the epoch with `score`."""
    model.layers[0].kernel.assign(np.full((2, 1), epoch, "float32"))
    for callback in callbacks:
        callback.on_epoch_end(epoch, {"val_top1": score})


def _best_model_epoch(run):
    best = keras.saving.load_model(run / "best.keras")
    return int(keras.ops.convert_to_numpy(best.layers[0].kernel)[0, 0])


def test_best_model_is_replaced_only_by_a_better_one_across_resumes(tmp_path):
    run = RunFolder(tmp_path / "run").create()
    _end_epoch(*_best_and_checkpoint(run), 0, 0.8)
    saved = (run / "best.keras").read_bytes()
    resumed = _best_and_checkpoint(run)  # a new process, same folder
    _end_epoch(*resumed, 3, 0.5)
    assert (run / "best.keras").read_bytes() == saved
    _end_epoch(*resumed, 4, 0.9)
    assert _best_model_epoch(run) == 4
    assert json.loads((run / "best.json").read_text()) == {
        "monitor": "val_top1", "value": 0.9, "epoch": 4}


@pytest.mark.backend_independent
def test_best_model_is_committed_with_its_epochs_checkpoint(tmp_path, monkeypatch):
    run = RunFolder(tmp_path / "run").create()
    model, callbacks = _best_and_checkpoint(run)
    _end_epoch(model, callbacks, 0, 0.5)
    first = (run / "best.keras").read_bytes(), (run / "best.json").read_text()
    # Killed after the best model of epoch 1 was written, before its checkpoint:
    # the resume replays epoch 1, so its model is not the best one.
    model.layers[0].kernel.assign(np.ones((2, 1), "float32"))
    callbacks[0].on_epoch_end(1, {"val_top1": 0.8})
    assert ((run / "best.keras").read_bytes(), (run / "best.json").read_text()) == first
    resumed, callbacks = _best_and_checkpoint(run)
    assert run.restore_checkpoint(resumed)["epoch"] == 1
    assert ((run / "best.keras").read_bytes(), (run / "best.json").read_text()) == first
    assert callbacks[0].best == 0.5 and run.foreign_entries() == []
    # Killed just after the checkpoint of epoch 1 committed its new best model:
    # the resume keeps it, and it is the score to beat.
    with monkeypatch.context() as killed:
        killed.setattr(RunFolder, "settle_best", lambda self: None)
        _end_epoch(resumed, callbacks, 1, 0.7)
    assert _best_model_epoch(run) == 0
    resumed, callbacks = _best_and_checkpoint(run)
    assert callbacks[0].best == 0.7
    assert run.restore_checkpoint(resumed)["epoch"] == 2
    assert _best_model_epoch(run) == 1
    assert json.loads((run / "best.json").read_text()) == {
        "monitor": "val_top1", "value": 0.7, "epoch": 1}
    assert sorted(path.name for path in (run / "backup").iterdir()) == [
        "checkpoint.json", "epoch-0002.weights.h5"]


@pytest.mark.backend_independent
def test_resume_rolls_log_and_tensorboard_back_to_the_checkpoint(tmp_path):
    import tensorflow as tf

    run = RunFolder(tmp_path / "run").create()
    (run / "log.csv").write_text("epoch,loss\n0,3.0\n1,2.0\n2,1.5\n")
    writer = tf.summary.create_file_writer(str(run / "tensorboard" / "train"))
    with writer.as_default():
        for step in range(3):
            tf.summary.scalar("epoch_loss", 3.0 - step, step=step)
    writer.close()
    run.roll_back_logs(2)  # the checkpoint says two epochs are done
    assert (run / "log.csv").read_text().split() == ["epoch,loss", "0,3.0", "1,2.0"]
    events = next((run / "tensorboard" / "train").glob("events.out.tfevents.*"))
    steps = [event.step for event in tf.compat.v1.train.summary_iterator(str(events))
             if event.HasField("summary")]
    assert steps == [0, 1]


def test_weight_decay_survives_saving_and_reloading(tmp_path):
    recipe = training.Recipe(image_size=67, resize_size=67, weight_decay=5e-4)
    model = training.build_model(recipe, num_classes=3)
    assert len(model.losses) == 8  # conv1-5, fc6-8
    model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras", compile=False)
    assert len(reloaded.losses) == 8
    np.testing.assert_allclose(
        sorted(float(keras.ops.convert_to_numpy(loss)) for loss in reloaded.losses),
        sorted(float(keras.ops.convert_to_numpy(loss)) for loss in model.losses), rtol=1e-6)


def test_train_turns_tensorflow_onednn_on_unless_the_user_chose(monkeypatch):
    import train

    _, args = train.parse_arguments([])
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    train.configure_environment(args)
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1"
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    train.configure_environment(args)
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"


# ------------------------------------------------------------- fine-tuning


@pytest.fixture(scope="module")
def small_caffemodel(tmp_path_factory):
    """bvlc_alexnet's layers (Caffe's LRN constants and mean) with random weights,
    fc6 sized for 67x67 crops (pool5 1x1), 10 classes."""
    path = tmp_path_factory.mktemp("pretrained") / "small.caffemodel"
    write_caffemodel(path, bvlc_alexnet_layers(random_weights(0, classes=10, pool5_size=1)))
    return path


def layer_weights(model, names):
    return {name: [keras.ops.convert_to_numpy(weight) for weight in model.get_layer(name).weights]
            for name in names}


CONVOLUTIONS = ("conv1", "conv2", "conv3", "conv4", "conv5")


def test_fine_tune_freezes_what_it_loaded_trains_a_new_fc8_and_resumes(
        colour_folder, small_caffemodel, tmp_path):
    output = tmp_path / "run"
    result = run_train("--data", str(colour_folder), "--fine-tune", str(small_caffemodel),
                       "--freeze", "conv5", "--epochs", "1", "--steps-per-epoch", "3",
                       "--output", str(output), *FAST)
    # Validation ran: it refuses normalised images for a model that normalises itself.
    assert result.returncode == 0, result.stderr[-3000:]
    assert "a new fc8 for 3 classes, layers up to conv5 frozen" in result.stdout
    recorded = json.loads((output / "run.json").read_text())["recipe"]
    assert (recorded["fine_tune"], recorded["freeze"]) == (str(small_caffemodel), "conv5")

    # The file's network: Caffe's LRN constants, and its mean subtracted in the model.
    pretrained = AlexNet(weights=str(small_caffemodel), input_shape=(67, 67, 3),
                         include_preprocessing=True)
    loaded = layer_weights(pretrained, [*CONVOLUTIONS, "fc6", "fc7"])
    after_one = keras.saving.load_model(output / "final.keras")
    assert after_one.output_shape == (None, 3)
    assert after_one.layers[1].name == "preprocessing" and after_one.get_layer("lrn1").k == 1.0
    for name, weights in layer_weights(after_one, [*CONVOLUTIONS, "fc6", "fc7"]).items():
        for trained, original in zip(weights, loaded[name]):
            if name in CONVOLUTIONS:  # frozen: bit for bit the file's
                np.testing.assert_array_equal(trained, original, err_msg=name)
            else:
                assert not np.array_equal(trained, original), name

    resumed = run_train("--output", str(output), "--resume", "--epochs", "2", "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming" in resumed.stdout and "Fine-tuning" in resumed.stdout
    assert [int(row["epoch"]) for row in log_rows(output)] == [0, 1]
    after_two = keras.saving.load_model(output / "final.keras")
    for name, weights in layer_weights(after_two, [*CONVOLUTIONS, "fc8"]).items():
        for trained, first in zip(weights, layer_weights(after_one, [name])[name]):
            if name in CONVOLUTIONS:
                np.testing.assert_array_equal(trained, first, err_msg=name)
            else:
                assert not np.array_equal(trained, first), name


@pytest.mark.backend_independent
@pytest.mark.parametrize("arguments,message", [
    (["--freeze", "conv9"], "before fc8 (the new classifier, always trained): preprocessing, "
                            "conv1, lrn1, pool1, conv2, lrn2, pool2, conv3, conv4, conv5, pool5, "
                            "flatten, fc6, drop6, fc7, drop7. Received: freeze='conv9'"),
    (["--image-size", "99", "--resize-size", "110"], "fc6 reads pool5 flattened"),  # 67x67 fc6
])
def test_fine_tune_mistakes_exit_2_and_write_nothing(colour_folder, small_caffemodel, tmp_path,
                                                     arguments, message):
    output = tmp_path / "run"
    result = run_train("--data", str(colour_folder), "--fine-tune", str(small_caffemodel),
                       "--output", str(output), *FAST, *arguments)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert not output.exists()


def _small_torchvision_file(path):
    """torchvision's AlexNet keys with random weights, fc6 sized for 67x67 crops."""
    import torch

    shapes = {"features.0": (64, 3, 11, 11), "features.3": (192, 64, 5, 5),
              "features.6": (384, 192, 3, 3), "features.8": (256, 384, 3, 3),
              "features.10": (256, 256, 3, 3), "classifier.1": (4096, 256),
              "classifier.4": (4096, 4096), "classifier.6": (1000, 4096)}
    generator = torch.Generator().manual_seed(0)
    state_dict = {}
    for prefix, shape in shapes.items():
        state_dict[f"{prefix}.weight"] = torch.randn(shape, generator=generator) * 0.01
        state_dict[f"{prefix}.bias"] = torch.randn(shape[0], generator=generator) * 0.01
    torch.save(state_dict, path)
    return str(path)


def test_fine_tuned_model_follows_the_weights_file(tmp_path):
    small = dict(image_size=67, resize_size=76)
    # torchvision's file: its variant, its normalisation in the model, only fc8 trained.
    pth = _small_torchvision_file(tmp_path / "alexnet.pth")
    recipe = training.Recipe(**small, fine_tune=pth, freeze="fc7")
    model = training.build_model(recipe, num_classes=4)
    assert [layer.name for layer in model.layers[1:4]] == ["preprocessing", "conv1_pad", "conv1"]
    assert "lrn1" not in [layer.name for layer in model.layers]
    assert sorted(weight.path for weight in model.trainable_weights) == ["fc8/bias", "fc8/kernel"]
    assert len(model.losses) == 1  # frozen kernels are not decayed: fc8's alone
    assert model.output_shape == (None, 4)
    reference = AlexNet(weights=pth, input_shape=(67, 67, 3))
    for name, weights in layer_weights(reference, [*CONVOLUTIONS, "fc6", "fc7"]).items():
        for value, expected in zip(layer_weights(model, [name])[name], weights):
            np.testing.assert_array_equal(value, expected, err_msg=name)
    assert training.takes_pixel_values(training.check_fine_tune(recipe, 4))

    # A zfnet saved by model.save_weights records nothing: the recipe's variant,
    # and the presets' normalisation (no preprocessing layer).
    keras.utils.set_random_seed(0)
    zfnet = AlexNet(variant="zfnet", input_shape=(67, 67, 3), classes=5, initialization="he")
    zfnet.save_weights(tmp_path / "zfnet.weights.h5")
    recipe = training.Recipe(**small, variant="zfnet", fine_tune=tmp_path / "zfnet.weights.h5")
    model = training.fine_tuned_model(recipe, num_classes=3)
    assert model.get_layer("conv1").kernel.shape == (7, 7, 3, 96)
    assert model.layers[1].name == "conv1" and model.output_shape == (None, 3)
    assert all(layer.trainable for layer in model.layers)
    for name, weights in layer_weights(zfnet, [*CONVOLUTIONS, "fc6", "fc7"]).items():
        for value, expected in zip(layer_weights(model, [name])[name], weights):
            np.testing.assert_array_equal(value, expected, err_msg=name)
    assert not training.takes_pixel_values(training.check_fine_tune(recipe, 3))

    with pytest.raises(ValueError, match="variant='one_weird_trick'. Received: variant='zfnet'"):
        training.fine_tuned_model(training.Recipe(**small, variant="zfnet", fine_tune=pth), 3)
    with pytest.raises(ValueError, match="Received: freeze='fc8'"):
        training.fine_tuned_model(training.Recipe(**small, fine_tune=pth, freeze="fc8"), 3)
    with pytest.raises(ValueError, match="needs `fine_tune`"):
        training.Recipe(freeze="conv5")


def test_a_fine_tuned_model_keeps_the_input_statistics_of_its_weights(tmp_path):
    from keras_alexnet.convert.caffe import PIXEL_MEAN
    from keras_alexnet.models import pixel_statistics

    path = tmp_path / "small.caffemodel"
    write_caffemodel(path, bvlc_alexnet_layers(random_weights(0, pool5_size=1)))
    model = training.fine_tuned_model(
        training.Recipe(image_size=67, resize_size=76, fine_tune=str(path)), num_classes=3)
    np.testing.assert_allclose(np.array(pixel_statistics(model)),
                               np.array([PIXEL_MEAN, (1.0, 1.0, 1.0)]), rtol=1e-6)


def test_presets_leave_pixels_for_a_model_that_normalises_itself(colour_folder):
    source = data.image_folder(colour_folder, validation_fraction=0.25)
    recipe = training.Recipe(image_size=67, resize_size=72, batch_size=16, seed=0)
    for normalize in (True, False):
        train, validation, _, preset = training.make_datasets(recipe, source,
                                                               normalize=normalize)
        assert preset.normalize == normalize
        for images, _ in (next(iter(train)), next(iter(validation))):
            # Normalised pixels lie within about (0 - 0.5) / 0.22 and (1 - 0.4) / 0.22;
            # PCA lighting may push the [0, 255] training pixels a little below 0.
            scale = np.abs(np.asarray(images)).max()
            assert scale < 4 if normalize else scale > 100


@pytest.mark.backend_independent
@pytest.mark.parametrize("recorded_variant", [None, "original"], ids=["older", "resolved"])
def test_resume_compares_the_values_a_run_trains_with(recorded_variant):
    """Defaults spelled out agree with a run.json that left them unset (as older
    ones left the variant): what is compared is what the run trains with."""
    recipe = {**dataclasses.asdict(training.Recipe(image_size=67, resize_size=72)),
              "variant": recorded_variant}
    settings = {"recipe": recipe, "arguments": {"data": "/images", "validation_fraction": None}}
    _, args = train_script.parse_arguments(
        ["--output", "run", "--resume", "--variant", "original", "--validation-fraction", "0.1"])
    recorded = train_script.resume_arguments(args, settings, training)
    assert args.data == "/images"
    resumed = train_script.make_recipe(args, training, None, recorded)
    assert resumed.variant == "original"
    assert training._recipe_changes(recipe, resumed) == {}
    _, args = train_script.parse_arguments(
        ["--output", "run", "--resume", "--variant", "zfnet", "--validation-fraction", "0.2"])
    with pytest.raises(ValueError, match=r"--variant: 'original' -> 'zfnet'; "
                                         r"--validation-fraction: 0.1 -> 0.2\."):
        train_script.resume_arguments(args, settings, training)


@pytest.mark.backend_independent
def test_resume_refuses_changed_data(tmp_path):
    """The examples per split, and a prepared folder's identity, are the run's data:
    a folder that gained an image would resume in another order."""
    folder = write_colour_folder(tmp_path / "images", COLOURS, 4)
    recipe = training.Recipe(image_size=67, resize_size=72, batch_size=4)
    source = data.image_folder(folder, validation_fraction=0.25)
    settings = {"recipe": dataclasses.asdict(recipe), "source": source.name,
                "class_names": source.class_names, "counts": source.counts,
                "source_identity": training.data_identity(source)}
    run = RunFolder(tmp_path / "run")
    assert training.check_resume(run, settings, recipe, source) is None
    Image.new("RGB", (80, 80)).save(folder / "red" / "4.jpg")
    grown = data.image_folder(folder, validation_fraction=0.25)
    assert grown.name == source.name and grown.class_names == source.class_names
    with pytest.raises(ValueError, match=r"train examples: 9 -> 10\. "):
        training.check_resume(run, settings, recipe, grown)
    prepared_again = dataclasses.replace(source, prepared_size=72, identify=lambda: {
        "path": "/prepared", "files": {"train": "0f" * 32}})
    with pytest.raises(ValueError, match=r"prepared folder: None -> \{'files': \{'train': '0f0f"):
        training.check_resume(run, settings, recipe, prepared_again)
    # A run.json from before counts and identities were recorded.
    older = {key: settings[key] for key in ("recipe", "source", "class_names")}
    assert training.check_resume(run, older, recipe, grown) is None


@pytest.mark.backend_independent
@pytest.mark.parametrize("arguments,message", [
    (["--num-processes", "2", "--heartbeat-timeout", "-1"],
     "--heartbeat-timeout must be >= 1. Received: -1"),
    (["--num-processes", "2", "--heartbeat-timeout", "0"],
     "--heartbeat-timeout must be >= 1. Received: 0"),
    (["--distribute", "model-parallel", "--model-parallel", "0"],
     "--model-parallel must be >= 1. Received: 0"),
    (["--cpu-devices", "0"], "--cpu-devices must be >= 1. Received: 0"),
    (["--epochs", "0"], "--epochs must be >= 1. Received: 0"),
    (["--steps-per-epoch", "0"], "--steps-per-epoch must be >= 1. Received: 0"),
    (["--lr", "nan"], "--lr must be > 0. Received: nan"),
    (["--dropout", "1"], "--dropout must be in [0, 1). Received: 1.0"),
    (["--validation-fraction", "-0.1"],
     "--validation-fraction must be in [0, 1). Received: -0.1"),
    (["--seed", "-1"], "--seed must be in [0, 2**32). Received: -1"),
    (["--process-id", "-1"], "--process-id must be >= 0. Received: -1"),
    (["--service-timeout", "0"], "--service-timeout must be > 0. Received: 0.0"),
])
def test_train_py_refuses_bad_numbers(arguments, message, tmp_path, capsys):
    """Checked before anything runs (exit code 2, nothing written); 0 is a value,
    not "unset"."""
    output = tmp_path / "run"
    assert train_script.main(["--output", str(output), *arguments]) == 2
    assert f"error: {message}" in capsys.readouterr().err
    assert not output.exists()
