"""The callbacks of a training run: validation, the schedule, NaN, best model, checkpoints, logs."""

import contextlib
import math
import os
import time

import keras
import numpy as np

from keras_alexnet import evaluation
from keras_alexnet.run_folder import (
    BACKUP,
    BEST_MODEL,
    BEST_SCORE,
    PARTIAL_BEST_MODEL,
    restore_torch_random_states,
    write_json_atomically,
)


class NaNLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


class Validation(keras.callbacks.Callback):
    """Adds `val_loss`, `val_top1` and `val_top5` over every validation image to the logs.

    Keras' own validation inside `fit` re-batches for several replicas and
    then drops or repeats images when the split is not a multiple of the
    global batch. This evaluates each image exactly once, in any layout,
    through `keras_alexnet.evaluation` (the code of the final evaluation),
    and computes the loss as `fit` does: the mean cross-entropy plus the
    weight-decay penalty. Put it first, so later callbacks see the scores.
    """

    def __init__(self, dataset, num_classes):
        super().__init__()
        self.dataset = dataset
        self.top5 = min(5, num_classes)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        probabilities, labels = evaluation.predict_probabilities(self.model, self.dataset)
        picked = probabilities[np.arange(len(labels)), labels]
        # Keras clips probabilities to [epsilon, 1 - epsilon] in its cross-entropy.
        epsilon = keras.config.epsilon()
        cross_entropy = -np.mean(np.log(np.clip(picked, epsilon, 1 - epsilon)))
        penalty = sum(float(keras.ops.convert_to_numpy(loss)) for loss in self.model.losses)
        logs["val_loss"] = float(cross_entropy + penalty)
        logs["val_top1"] = 1 - evaluation.top_k_error(probabilities, labels, 1)
        logs["val_top5"] = 1 - evaluation.top_k_error(probabilities, labels, self.top5)


class PlateauSchedule(keras.callbacks.Callback):
    """Divides the learning rate by 10 when validation top-1 stops improving.

    The paper's schedule: "divide the learning rate by 10 when the validation
    error rate stopped improving", three times in all. Unlike
    `keras.callbacks.ReduceLROnPlateau`, its state (best score, epochs
    without improvement, drops so far) is a plain dict saved with each
    checkpoint, so a resumed run continues the same schedule. A drop
    decided at the end of an epoch is applied when the next one begins, so
    every epoch-end callback (`log.csv`, TensorBoard, the summary line) sees
    the rate the epoch trained at; a checkpoint taken in between records the
    drop as pending.
    """

    def __init__(self, factor=0.1, patience=5, max_drops=3, monitor="val_top1", state=None):
        super().__init__()
        self.factor = factor
        self.patience = patience
        self.max_drops = max_drops
        self.monitor = monitor
        self.state = {"best": -math.inf, "wait": 0, "drops": 0, "pending_drop": False,
                      **(state or {})}

    def _rate(self):
        return float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_epoch_begin(self, epoch, logs=None):
        if self.state["pending_drop"]:
            self.model.optimizer.learning_rate.assign(self._rate() * self.factor)
            self.state["pending_drop"] = False

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        logs["learning_rate"] = self._rate()
        score = logs.get(self.monitor)
        if score is None:
            return
        if score > self.state["best"]:
            self.state.update(best=float(score), wait=0)
        else:
            self.state["wait"] += 1
        if self.state["wait"] >= self.patience and self.state["drops"] < self.max_drops:
            self.state.update(wait=0, drops=self.state["drops"] + 1, pending_drop=True)


class StopOnNaN(keras.callbacks.Callback):
    """Raises `NaNLossError` at the first non-finite loss.

    Raising (rather than `model.stop_training`, as `TerminateOnNaN` does)
    skips the epoch-end callbacks, so the last checkpoint stays the last good one.
    """

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss):
            raise NaNLossError(f"The loss became {loss} at batch {batch}.")


class BestModel(keras.callbacks.Callback):
    """Saves the model with the best `monitor` score so far as `best.keras`.

    The score is kept in `best.json` beside it, so a resumed run replaces
    `best.keras` only with a better model. A new best model and its score
    are written to `backup/` and moved up when `RunCheckpoint` commits
    their epoch (`RunFolder.settle_best`): a run killed before that commit
    replays the epoch, and keeps no best model from it. The model is written
    to a temporary file and renamed, so a kill never leaves half a model.

    Args:
        run: the `RunFolder`.
        monitor: the score in the logs; higher is better.
        writer: a `distribute.ModelWriter` of the model, for a run over
            several processes (every process decides, process 0 writes);
            by default this process saves the model it trains.
        best: the score to beat; by default the one in the run's `best.json`.
    """

    def __init__(self, run, monitor, writer=None, best=None):
        super().__init__()
        self.run = run
        self.monitor = monitor
        self.writer = writer
        if best is None:
            best = _previous_best(run)
        self.best = best

    def on_epoch_end(self, epoch, logs=None):
        score = (logs or {}).get(self.monitor)
        if score is None or not score > self.best:
            return
        self.best = float(score)
        with _model_to_save(self) as model:
            if model is None:  # another process than process 0
                return
            (self.run / BACKUP).mkdir(exist_ok=True)
            temporary = self.run / BACKUP / PARTIAL_BEST_MODEL
            model.save(temporary)
        os.replace(temporary, self.run / BACKUP / BEST_MODEL)
        # Last: the score is what makes the model in backup/ this epoch's best.
        write_json_atomically(self.run / BACKUP / BEST_SCORE,
                              {"monitor": self.monitor, "value": self.best, "epoch": epoch})


class RunCheckpoint(keras.callbacks.Callback):
    """Commits a checkpoint (weights, optimizer, epoch, schedule state) after every epoch.

    Put it last: when it records an epoch as done, that epoch's log row,
    TensorBoard events and best model are already written (the best model
    is moved up once committed, `RunFolder.settle_best`). `writer`: as
    for `BestModel`. `resumed_from`: the checkpoint record a resumed run
    restored, whose torch generator states it sets before the first step.
    """

    def __init__(self, run, schedule, writer=None, resumed_from=None):
        super().__init__()
        self.run = run
        self.schedule = schedule
        self.writer = writer
        self.resumed_from = resumed_from

    def on_train_batch_begin(self, batch, logs=None):
        if self.resumed_from is not None:
            restore_torch_random_states(self.resumed_from)
            self.resumed_from = None

    def on_epoch_end(self, epoch, logs=None):
        with _model_to_save(self) as model:
            if model is not None:
                self.run.save_checkpoint(model, epoch + 1, {"schedule": self.schedule.state})


def _model_to_save(callback):
    """A context giving the callback's model to save (None on processes that do not write)."""
    if callback.writer is None:
        return contextlib.nullcontext(callback.model)
    return callback.writer.latest()


class EpochSummary(keras.callbacks.Callback):
    """Prints one line per epoch: errors, learning rate and measured images per second.

    Images per second count the batches this epoch really trained on, times
    the global batch size, over the epoch's training time (validation not
    included).
    """

    def __init__(self, epochs, batch_size, log=print):
        super().__init__()
        self.epochs = epochs
        self.batch_size = batch_size
        self.log = log
        self.images_per_second = []

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()
        self.batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        self.trained = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        line = (f"epoch {epoch + 1}/{self.epochs}: loss {logs.get('loss', float('nan')):.4f}, "
                f"top-1 error {100 * (1 - logs.get('top1', 0)):.1f}%")
        if "val_top1" in logs:
            line += (f", validation top-1/top-5 error {100 * (1 - logs['val_top1']):.1f}%/"
                     f"{100 * (1 - logs['val_top5']):.1f}%")
        if "learning_rate" in logs:
            line += f", lr {logs['learning_rate']:.2g}"
        if self.batches:
            speed = self.batches * self.batch_size / (self.trained - self.started)
            self.images_per_second.append(speed)
            line += f", {speed:.0f} images/s"
        self.log(line)


class SkippedFilesReport(keras.callbacks.Callback):
    """Warns at the end of each epoch about files the input pipeline could not decode.

    The pipeline appends their names to `skipped_files.txt` as it meets them
    (`keras_alexnet.data`); this names the new ones once. `record` adds the
    files the source skipped before training (`Source.skipped`).
    """

    def __init__(self, path, log=print):
        super().__init__()
        self.path = path
        self.log = log
        self.reported = set(self.names())

    def record(self, names):
        """Adds files the source left out before training (when listed or prepared), once."""
        new = [name for name in dict.fromkeys(names) if name not in self.reported]
        if new:
            # surrogateescape: a name that is not valid UTF-8 is written as its own bytes.
            with open(self.path, "a", encoding="utf-8", errors="surrogateescape") as handle:
                handle.writelines(f"{name}\n" for name in new)
            self.log(f"{len(new)} file(s) were left out when the source was listed or "
                     f"prepared (listed in {self.path}).")
            self.reported.update(new)

    def names(self):
        if not os.path.exists(self.path):
            return []
        with open(self.path, encoding="utf-8", errors="surrogateescape") as handle:
            return list(dict.fromkeys(line.rstrip("\n") for line in handle if line.strip()))

    def on_epoch_end(self, epoch, logs=None):
        new = [name for name in self.names() if name not in self.reported]
        if new:
            shown = ", ".join(new[:10]) + (" ..." if len(new) > 10 else "")
            self.log(f"warning: skipped {len(new)} file(s) that could not be decoded as "
                     f"images (listed in {self.path}): {shown}")
            self.reported.update(new)


def _previous_best(run):
    """The best score of a run as of its last checkpoint (`RunFolder.read_best`), or -inf."""
    previous = run.read_best()
    return previous["value"] if previous else -math.inf
