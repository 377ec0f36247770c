"""The paper's training recipe (§5) as library functions; `train.py` is a thin CLI over them.

    from keras_alexnet import data, training
    source = data.image_folder("~/images")
    summary = training.train(training.Recipe(epochs=30), source, "runs/mine")

The run folder holds `run.json` (the settings), `backup/` (the checkpoint a
killed run resumes from: weights, optimizer state, epoch and the
learning-rate schedule), `best.keras`, `final.keras`, `log.csv`,
`tensorboard/` and, once finished, `summary.json`.
"""

import dataclasses
import json
import math
import os
import shutil
import time
from pathlib import Path

import keras
import numpy as np

from keras_alexnet import evaluation
from keras_alexnet._validation import check_positive_int
from keras_alexnet.distribute import distribution_scope
from keras_alexnet.export import export_saved_model
from keras_alexnet.models import AlexNet
from keras_alexnet.models.alexnet import validate_architecture
from keras_alexnet.presets import EvalPreset, TrainPreset

RUN_MARKER = "run.json"
SUMMARY = "summary.json"


class NaNLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


class RunFolderError(RuntimeError):
    """The output folder cannot be used as asked (exists, unwritable, foreign)."""


@dataclasses.dataclass
class Recipe:
    """Training settings; the defaults are the paper's (§5).

    SGD with momentum 0.9, batch 128, weight decay 5e-4, learning rate 0.01
    divided by 10 when the validation top-1 error has not improved for
    `lr_patience` epochs, at most `max_lr_drops` (3) times, 90 epochs,
    dropout 0.5, the paper's initialisation, 227x227 crops of 256x256 images.

    Weight decay is applied as in the paper's update rule
    `v <- 0.9 v - wd * lr * w - lr * dL/dw`: an L2 penalty `wd / 2 * ||w||^2`
    on every kernel adds `wd * w` to the gradient before momentum. Keras'
    `SGD(weight_decay=...)` is decoupled (applied outside momentum), which is
    a different rule. Biases are not decayed (as in Caffe's bvlc_alexnet).
    """

    variant: str = "original"
    image_size: int = 227
    resize_size: int = 256
    epochs: int = 90
    batch_size: int = 128
    learning_rate: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    dropout: float = 0.5
    initialization: str = "paper"
    lr_factor: float = 0.1
    lr_patience: int = 5
    max_lr_drops: int = 3
    lighting_std: float = 0.1
    policy: str = None
    mixed_precision: bool = False
    steps_per_epoch: int = None
    ten_crop: bool = False
    seed: int = None

    def __post_init__(self):
        for name in ("image_size", "resize_size", "epochs", "batch_size", "lr_patience"):
            check_positive_int(name, getattr(self, name))
        if self.steps_per_epoch is not None:
            check_positive_int("steps_per_epoch", self.steps_per_epoch)
        if self.resize_size < self.image_size:
            raise ValueError(
                f"`resize_size` ({self.resize_size}) must be >= `image_size` "
                f"({self.image_size})."
            )
        for name in ("learning_rate", "lr_factor"):
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}` must be > 0. Received: {getattr(self, name)!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"`momentum` must be in [0, 1). Received: {self.momentum!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"`weight_decay` must be >= 0. Received: {self.weight_decay!r}")
        if not isinstance(self.max_lr_drops, int) or self.max_lr_drops < 0:
            raise ValueError(f"`max_lr_drops` must be >= 0. Received: {self.max_lr_drops!r}")
        validate_architecture(self.variant, self.initialization, self.dropout)
        # Validates the augmentation settings before any data is touched.
        TrainPreset(crop_size=self.image_size, resize_size=self.resize_size,
                    lighting_std=self.lighting_std, policy=self.policy)


# ------------------------------------------------------------------ model


def apply_weight_decay(model, weight_decay):
    """Adds the paper's weight decay (an L2 penalty wd/2 ||w||^2) to every kernel."""
    if weight_decay == 0:
        return
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is not None:
            kernel.regularizer = keras.regularizers.L2(weight_decay / 2)


def build_model(recipe, num_classes):
    """The compiled AlexNet of a recipe (call inside the distribution scope)."""
    if recipe.mixed_precision:
        keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    model = AlexNet(
        variant=recipe.variant,
        input_shape=(recipe.image_size, recipe.image_size, 3),
        classes=num_classes,
        dropout=recipe.dropout,
        initialization=recipe.initialization,
    )
    apply_weight_decay(model, recipe.weight_decay)
    model.compile(
        optimizer=keras.optimizers.SGD(recipe.learning_rate, momentum=recipe.momentum),
        loss="sparse_categorical_crossentropy",
        metrics=[
            keras.metrics.SparseTopKCategoricalAccuracy(k=1, name="top1"),
            keras.metrics.SparseTopKCategoricalAccuracy(k=min(5, num_classes), name="top5"),
        ],
    )
    return model


# -------------------------------------------------------------- callbacks


class PlateauSchedule(keras.callbacks.Callback):
    """Divides the learning rate by 10 when validation top-1 stops improving.

    The paper's schedule: "divide the learning rate by 10 when the validation
    error rate stopped improving", three times in all. Unlike
    `keras.callbacks.ReduceLROnPlateau`, its state (best score, epochs
    without improvement, drops so far) lives in `state_file`, so a resumed run
    continues the same schedule.
    """

    def __init__(self, state_file, factor=0.1, patience=5, max_drops=3,
                 monitor="val_top1"):
        super().__init__()
        self.state_file = Path(state_file)
        self.factor = factor
        self.patience = patience
        self.max_drops = max_drops
        self.monitor = monitor
        self.state = {"best": -math.inf, "wait": 0, "drops": 0}

    def on_train_begin(self, logs=None):
        if self.state_file.exists():
            self.state = json.loads(self.state_file.read_text())

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        score = logs.get(self.monitor, logs.get("top1"))
        if score is not None:
            if score > self.state["best"]:
                self.state.update(best=float(score), wait=0)
            else:
                self.state["wait"] += 1
            if self.state["wait"] >= self.patience and self.state["drops"] < self.max_drops:
                rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
                self.model.optimizer.learning_rate.assign(rate * self.factor)
                self.state.update(wait=0, drops=self.state["drops"] + 1)
        logs["learning_rate"] = float(
            keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        _write_json_atomically(self.state_file, self.state)


class StopOnNaN(keras.callbacks.Callback):
    """Raises `NaNLossError` at the first non-finite loss.

    Raising (rather than `model.stop_training`, as `TerminateOnNaN` does)
    skips the epoch-end callbacks, so the last checkpoint stays the last good one.
    """

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss):
            raise NaNLossError(f"The loss became {loss} at batch {batch}.")


class EpochSummary(keras.callbacks.Callback):
    """Prints one line per epoch: errors, learning rate and images per second."""

    def __init__(self, epochs, images_per_epoch, log=print):
        super().__init__()
        self.epochs = epochs
        self.images_per_epoch = images_per_epoch
        self.log = log
        self.images_per_second = []

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        speed = self.images_per_epoch / (time.perf_counter() - self.started)
        if speed > 0:
            self.images_per_second.append(speed)
        line = (f"epoch {epoch + 1}/{self.epochs}: loss {logs.get('loss', float('nan')):.4f}, "
                f"top-1 error {100 * (1 - logs.get('top1', 0)):.1f}%")
        if "val_top1" in logs:
            line += (f", validation top-1/top-5 error {100 * (1 - logs['val_top1']):.1f}%/"
                     f"{100 * (1 - logs['val_top5']):.1f}%")
        line += f", lr {logs.get('learning_rate', float('nan')):.2g}, {speed:.0f} images/s"
        self.log(line)


def _write_json_atomically(path, content):
    path = Path(path)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(content, indent=2, default=str))
    os.replace(temporary, path)


# ------------------------------------------------------------- run folder


def prepare_run_folder(output, resume=False, overwrite=False, create=True):
    """Checks (and with `create`, makes) the run folder, losing nothing already there.

    A folder with a run in it is used only with `resume` (continue it) or
    `overwrite` (start again; only a keras-alexnet run folder is cleared).
    With `create=False` nothing is written: a check before any work starts.
    """
    output = Path(output).expanduser().resolve()
    if resume and overwrite:
        raise RunFolderError("Use either --resume or --overwrite, not both.")
    if output.exists() and not output.is_dir():
        raise RunFolderError(f"The output {output} exists and is not a folder.")
    existing = output.exists() and any(output.iterdir())
    is_run = (output / RUN_MARKER).exists()
    if existing and not is_run:
        raise RunFolderError(
            f"{output} is not empty and is not a keras-alexnet run folder; choose another "
            "--output."
        )
    if resume and not is_run:
        raise RunFolderError(f"Nothing to resume: {output} holds no run ({RUN_MARKER}).")
    if is_run and not (resume or overwrite):
        state = "a finished run" if (output / SUMMARY).exists() else "an unfinished run"
        raise RunFolderError(
            f"{output} already holds {state}; pass --resume to continue it or --overwrite "
            "to start again."
        )
    ancestor = next(path for path in [output, *output.parents] if path.exists())
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise RunFolderError(f"Cannot create or write {output}: {ancestor} is not a "
                             "writable folder.")
    if not create:
        return output
    if is_run and overwrite:
        shutil.rmtree(output)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunFolderError(f"Cannot create {output}: {error}") from error
    return output


# ----------------------------------------------------------------- train


def make_datasets(recipe, source, replicas=1):
    """The training and validation datasets of a recipe, and steps per epoch."""
    train_preset = TrainPreset(crop_size=recipe.image_size, resize_size=recipe.resize_size,
                               lighting_std=recipe.lighting_std, policy=recipe.policy)
    eval_preset = EvalPreset(crop_size=recipe.image_size, resize_size=recipe.resize_size)
    cache = _fits_in_memory(source)
    train = train_preset.dataset(source.train, recipe.batch_size, seed=recipe.seed,
                                 cache=cache)
    steps = recipe.steps_per_epoch
    if steps is None:
        count = source.counts.get("train")
        if count is not None and count < recipe.batch_size:
            raise ValueError(
                f"The training split has {count} images, fewer than one batch of "
                f"{recipe.batch_size}; use a smaller --batch-size."
            )
    else:
        train = train.repeat()
    validation = None
    if source.validation is not None:
        validation = eval_preset.dataset(source.validation, recipe.batch_size, cache=cache)
        if replicas > 1:
            # Every replica needs a full share of each batch.
            validation = validation.unbatch().batch(recipe.batch_size, drop_remainder=True)
    return train, validation, steps, eval_preset


def _fits_in_memory(source):
    return sum(count or math.inf for count in source.counts.values()) <= 20_000


def train(recipe, source, output, resume=False, overwrite=False, distribute="none",
          export=None, log=print, verbose="auto"):
    """Trains AlexNet on a source with a recipe; returns the summary dict.

    Args:
        recipe: a `Recipe`.
        source: a `keras_alexnet.data.Source`.
        output: the run folder (see the module docstring).
        resume: continue the run in `output` from its last checkpoint.
        overwrite: start again, clearing the run in `output`.
        distribute: `"none"`, `"mirrored"` (TensorFlow) or `"data-parallel"` (JAX).
        export: a folder to export the final model to as a SavedModel.
        log: where progress lines go.
        verbose: Keras' `fit` verbosity (progress bar).
    """
    if export is not None and Path(export).exists() and not overwrite:
        raise RunFolderError(f"The export folder {export} already exists; pass --overwrite.")
    scope, replicas = distribution_scope(distribute, recipe.batch_size)
    output = prepare_run_folder(output, resume=resume, overwrite=overwrite)
    settings = {"recipe": dataclasses.asdict(recipe), "source": source.name,
                "class_names": source.class_names, "backend": keras.backend.backend(),
                "distribute": distribute, "replicas": replicas}
    if not resume:
        _write_json_atomically(output / RUN_MARKER, settings)
    if recipe.seed is not None:
        keras.utils.set_random_seed(recipe.seed)

    train_data, validation, steps, eval_preset = make_datasets(recipe, source, replicas)
    with scope:
        model = build_model(recipe, source.num_classes)

    # Unknown for TFDS sources without split metadata: then no images/s figure.
    images_per_epoch = (steps or (source.counts.get("train") or 0) // recipe.batch_size
                        ) * recipe.batch_size
    summary_printer = EpochSummary(recipe.epochs, images_per_epoch, log)
    monitor = "val_top1" if validation is not None else "top1"
    # The backup comes last: when it records an epoch as done, the schedule
    # state, the CSV row and the best model of that epoch are already written.
    callbacks = [
        StopOnNaN(),
        PlateauSchedule(output / "lr_schedule.json", recipe.lr_factor, recipe.lr_patience,
                        recipe.max_lr_drops, monitor=monitor),
        keras.callbacks.CSVLogger(str(output / "log.csv"), append=resume),
        keras.callbacks.TensorBoard(str(output / "tensorboard")),
        keras.callbacks.ModelCheckpoint(str(output / "best.keras"), monitor=monitor,
                                        mode="max", save_best_only=True),
        summary_printer,
        keras.callbacks.BackupAndRestore(str(output / "backup"), double_checkpoint=True,
                                         delete_checkpoint=False),
    ]
    backup_state = output / "backup" / "training_metadata.json"
    if resume and backup_state.exists():
        epoch = json.loads(backup_state.read_text())["epoch"]
        log(f"Resuming {output} at epoch {epoch + 1} of {recipe.epochs}.")
    log(f"Training AlexNet ({recipe.variant}) on {source.name}: {source.num_classes} classes, "
        f"{source.counts}, backend {keras.backend.backend()}, {replicas} replica(s).")
    started = time.perf_counter()
    model.fit(train_data, validation_data=validation, epochs=recipe.epochs,
              steps_per_epoch=steps, callbacks=callbacks, verbose=verbose)
    wall_time = time.perf_counter() - started
    model.save(output / "final.keras")

    result = {"top1_error": None, "top5_error": None, "examples": 0}
    if source.validation is not None:
        final_preset = dataclasses.replace(eval_preset, ten_crop=recipe.ten_crop)
        result = evaluation.evaluate(
            model, final_preset.dataset(source.validation, recipe.batch_size))
    summary = {
        **result,
        "evaluation": "10-crop" if recipe.ten_crop else "centre crop",
        "epochs": recipe.epochs,
        "wall_time_seconds": wall_time,
        "images_per_second": (float(np.median(summary_printer.images_per_second))
                              if summary_printer.images_per_second else None),
        "backend": keras.backend.backend(),
        "replicas": replicas,
        "chance_top1_error": 1 - 1 / source.num_classes,
        "final_model": str(output / "final.keras"),
        "best_model": str(output / "best.keras"),
    }
    if export is not None:
        summary["export"] = export_saved_model(model, export, class_names=source.class_names,
                                               preset=eval_preset, overwrite=overwrite)
    _write_json_atomically(output / SUMMARY, summary)
    return summary

