"""The paper's training recipe (§5) as library functions; `train.py` is a thin CLI over them.

    from keras_alexnet import data, training
    source = data.image_folder("~/images")
    summary = training.train(training.Recipe(epochs=30), source, "runs/mine")
    # ZFNet §5.2: a pretrained network, a new fc8, conv1-conv5 kept as they are.
    transfer = training.Recipe(fine_tune="bvlc_alexnet.caffemodel", freeze="conv5")

The run folder (`keras_alexnet.run_folder`) holds `run.json` (the settings),
`backup/` (the checkpoint a killed run resumes from: weights, optimizer
state, epoch, the learning-rate schedule's state), `best.keras` and
`best.json` (its score), `final.keras`, `log.csv`, `tensorboard/`, the
names of the files skipped in `skipped_files.txt` (undecodable ones met in
training, and those the source left out: `Source.skipped`), and, once finished,
`summary.json`. In a run over several processes (`keras_alexnet.distribute`)
process 0 alone writes it; see `train`.
"""

import contextlib
import dataclasses
import json
import math
import os
import time
from pathlib import Path

import keras
import numpy as np

from keras_alexnet import convert, evaluation
from keras_alexnet import distribute as distribute_lib
from keras_alexnet._validation import check_positive_int
from keras_alexnet.data_service import (STALL_TIMEOUT_SECONDS, EpochJobs,
                                        StalledServiceWatchdog,
                                        check_dispatcher)
from keras_alexnet.export import check_export_target, export_saved_model
from keras_alexnet.models import AlexNet, AlexNetModel
from keras_alexnet.models.alexnet import (DEFAULT_INPUT_SHAPES, initializers,
                                          validate_architecture)
from keras_alexnet.presets import EvalPreset, TrainPreset, square_bytes
from keras_alexnet.run_folder import (BACKUP, BEST_MODEL, BEST_SCORE, FINAL_MODEL, LOG,
                                      SETTINGS, SKIPPED_FILES, SUMMARY, TENSORBOARD, RunFolder,
                                      RunFolderError, restore_torch_random_states,
                                      write_json_atomically)

# Decoded training images are kept in memory for the whole run when their
# central squares (resize_size**2 * 3 bytes each) fit in this many bytes.
CACHE_BYTES = 2 * 1024**3
# Recipe fields a resumed run may change: more epochs, and the learning rate
# from the resumed epoch on (after a NaN loss, say). Anything else would
# change the model or the data under a half-trained run.
RESUMABLE_CHANGES = ("epochs", "learning_rate")

__all__ = ["Recipe", "NaNLossError", "RunFolderError", "train", "build_model",
           "make_datasets", "fine_tuned_model", "check_fine_tune"]


class NaNLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


def default_image_size(variant):
    """The crop size a `Recipe` of `variant` trains at without `image_size`:
    `AlexNet`'s default input size (227, or 224 for one_weird_trick and zfnet)."""
    return DEFAULT_INPUT_SHAPES[variant or "original"][0]


def trained_variant(variant, pretrained=None):
    """The variant a recipe of `variant` trains: the weights file's when it names one
    (`pretrained`, read from `Recipe.fine_tune`), else `variant`, else "original"."""
    return (pretrained.variant if pretrained else None) or variant or "original"


@dataclasses.dataclass
class Recipe:
    """Training settings; the defaults are the paper's (§5).

    SGD with momentum 0.9, batch 128, weight decay 5e-4, learning rate 0.01
    divided by 10 when the validation top-1 error has not improved for
    `lr_patience` epochs, at most `max_lr_drops` (3) times, 90 epochs,
    dropout 0.5, the paper's initialisation, 227x227 crops of 256x256 images.
    `image_size` `None` is the variant's input size (`AlexNet`'s default:
    227 for the original, 224 for one_weird_trick and ZFNet).

    Weight decay is applied as in the paper's update rule
    `v <- 0.9 v - wd * lr * w - lr * dL/dw`: an L2 penalty `wd / 2 * ||w||^2`
    on every kernel adds `wd * w` to the gradient before momentum. Keras'
    `SGD(weight_decay=...)` is decoupled (applied outside momentum), which is
    a different rule. Biases are not decayed (as in Caffe's bvlc_alexnet).

    `variant`: `None` is `"original"` (and becomes it), or with `fine_tune`
    the weights file's (see `keras_alexnet.AlexNet`; `train` records it).

    Transfer learning (ZFNet §5.2, https://arxiv.org/abs/1311.2901: an
    ImageNet network with a new softmax layer trained on Caltech-101/256):
    `fine_tune` is a weights file that `AlexNet(weights=...)` reads
    (`.weights.h5`, `.caffemodel`, `.pth` / `.pt`; a relative path is made
    absolute). The run trains that network at `image_size` with a new fc8
    for the data's classes (see `fine_tuned_model`); the variant, LRN
    constants and input normalisation follow the file. `freeze` names the
    last layer that is not trained (e.g. `"conv5"`): it and every layer
    before it keep the file's weights exactly. A resumed run reads the file
    again for its architecture, so keep it where it was.
    """

    variant: str = None
    image_size: int = None
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
    fine_tune: str = None
    freeze: str = None

    def __post_init__(self):
        validate_architecture(self.variant, self.initialization, self.dropout)
        if self.variant is None and self.fine_tune is None:
            # Resolved, as `image_size` is: a run records and compares what it trains.
            self.variant = "original"
        if self.image_size is None:
            self.image_size = default_image_size(self.variant)
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
        if self.freeze is not None and self.fine_tune is None:
            raise ValueError(
                "`freeze` keeps pretrained layers as they are, so it needs `fine_tune`: "
                f"the weights file to start from. Received: freeze={self.freeze!r}"
            )
        if self.fine_tune is not None:
            self.fine_tune = os.path.abspath(os.path.expanduser(os.fspath(self.fine_tune)))
        # Validates the augmentation settings before any data is touched.
        TrainPreset(crop_size=self.image_size, resize_size=self.resize_size,
                    lighting_std=self.lighting_std, policy=self.policy)


# ------------------------------------------------------------------ model


def apply_weight_decay(model, weight_decay):
    """Adds the paper's weight decay (an L2 penalty wd/2 ||w||^2) to every trained kernel.

    The regulariser is set on each layer (`kernel_regularizer`, so it is part
    of the layer's config and a reloaded `.keras` model keeps it) and on its
    kernel variable (where Keras collects the penalty from a built layer).
    Frozen layers (`trainable=False`) are left out: their penalty would be a
    constant added to the loss.
    """
    if weight_decay == 0:
        return
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is not None and layer.trainable:
            regularizer = keras.regularizers.L2(weight_decay / 2)
            layer.kernel_regularizer = regularizer
            kernel.regularizer = regularizer


def takes_pixel_values(pretrained):
    """Whether a model fine-tuned from `pretrained` normalises its inputs itself.

    True when the weights file records the pixel statistics its network was
    trained with (Caffe's and torchvision's files, and `.weights.h5` files
    converted from them): the model then starts with a
    `keras.layers.Normalization` of those (`include_preprocessing=True`) and
    the presets leave the pixels in [0, 255] (`normalize=False`), so every
    image is normalised exactly once. A `.weights.h5` saved by
    `model.save_weights` after training with the presets' normalisation
    records none and is fed as such.

    Examples:
        >>> takes_pixel_values(convert.read_weights("bvlc_alexnet.caffemodel"))
        True
    """
    return pretrained is not None and pretrained.pixel_mean is not None


def fine_tuned_model(recipe, num_classes, pretrained=None):
    """The pretrained network of `recipe.fine_tune` with a new fc8 (ZFNet §5.2).

    Every layer but fc8 is built and loaded from the file as
    `AlexNet(weights=recipe.fine_tune)` would (its variant, LRN constants and
    input normalisation, see `takes_pixel_values`), at the recipe's image
    size; fc8 is a new softmax layer of `num_classes` units initialised as
    `recipe.initialization` says. The layers up to and including
    `recipe.freeze` are frozen (`trainable=False`).

    Args:
        recipe: a `Recipe` with `fine_tune` set.
        num_classes: the new dataset's number of classes.
        pretrained: the file already read (`convert.read_weights`), to read
            it only once.

    Returns:
        An uncompiled `keras.Model` named `alexnet`.

    Raises:
        ValueError: the file cannot be read or does not fit the recipe (a
            different variant, an fc6 that reads another image size), or
            `recipe.freeze` is not a layer before fc8 (the message lists them).

    Examples:
        >>> recipe = Recipe(fine_tune="bvlc_alexnet.caffemodel", freeze="conv5")
        >>> model = fine_tuned_model(recipe, num_classes=101)   # Caltech-101
    """
    if pretrained is None:
        pretrained = convert.read_weights(recipe.fine_tune)
    base = AlexNet(
        variant=recipe.variant,
        weights=pretrained,
        input_shape=(recipe.image_size, recipe.image_size, 3),
        dropout=recipe.dropout,
        initialization=recipe.initialization,
        include_preprocessing=takes_pixel_values(pretrained),
    )
    kernel_init, bias_init = initializers(recipe.initialization, "fc8",
                                          trained_variant(recipe.variant, pretrained))
    classifier = keras.layers.Dense(num_classes, activation="softmax",
                                    kernel_initializer=kernel_init,
                                    bias_initializer=bias_init, name="fc8")
    model = AlexNetModel(base.input, classifier(base.get_layer("fc8").input), name=base.name,
                         pixel_mean=base.pixel_mean, pixel_std=base.pixel_std)
    if recipe.freeze is not None:
        layers = model.layers[1:]  # after the input layer
        names = [layer.name for layer in layers[:-1]]  # fc8 is always trained
        if recipe.freeze not in names:
            raise ValueError(
                "`freeze` must name a layer of the fine-tuned model before fc8 (the new "
                f"classifier, always trained): {', '.join(names)}. "
                f"Received: freeze={recipe.freeze!r}"
            )
        for layer in layers[:names.index(recipe.freeze) + 1]:
            layer.trainable = False
    return model


def check_fine_tune(recipe, num_classes):
    """Reads `recipe.fine_tune` and builds `fine_tuned_model` once, to fail early.

    `train` calls it before it writes anything, so a file that does not fit
    or a wrong `freeze` leaves the output folder as it was.

    Returns:
        The `PretrainedWeights` read (pass them to `build_model`), or `None`
        without `fine_tune`.

    Examples:
        >>> recipe = Recipe(fine_tune="bvlc_alexnet.caffemodel", freeze="conv9")
        >>> check_fine_tune(recipe, num_classes=101)
        ValueError: `freeze` must name a layer of the fine-tuned model before fc8 ...
    """
    if recipe.fine_tune is None:
        return None
    pretrained = convert.read_weights(recipe.fine_tune)
    fine_tuned_model(recipe, num_classes, pretrained)
    return pretrained


def build_model(recipe, num_classes, pretrained=None):
    """The compiled AlexNet of a recipe (call inside the distribution scope).

    With `recipe.fine_tune`, `fine_tuned_model` (`pretrained`: the file
    already read by `check_fine_tune`).
    """
    if recipe.mixed_precision:
        keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    if recipe.fine_tune is not None:
        model = fine_tuned_model(recipe, num_classes, pretrained)
    else:
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
    """Saves the model with the best `monitor` score so far to `best.keras`.

    The score is kept in `best.json` beside it, so a resumed run replaces
    `best.keras` only with a better model. Written to a temporary file and
    renamed, so a kill never leaves half a model.

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
            temporary = self.run / BACKUP / f"partial-{BEST_MODEL}"
            model.save(temporary)
        os.replace(temporary, self.run / BEST_MODEL)
        write_json_atomically(self.run / BEST_SCORE,
                              {"monitor": self.monitor, "value": self.best, "epoch": epoch})


class RunCheckpoint(keras.callbacks.Callback):
    """Commits a checkpoint (weights, optimizer, epoch, schedule state) after every epoch.

    Put it last: when it records an epoch as done, that epoch's log row,
    TensorBoard events and best model are already written. `writer`: as
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


def _read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None


def _previous_best(run):
    """The best score recorded in a run's `best.json`, or -inf."""
    previous = _read_json(run / BEST_SCORE)
    return previous["value"] if previous else -math.inf


# ----------------------------------------------------------------- train


def make_datasets(recipe, source, skipped_log=None, first_epoch=0, normalize=True,
                  data_service=None):
    """The training and validation datasets of a recipe, and the steps per epoch.

    `first_epoch`: the (Keras) epoch a resumed run starts at; the training
    batches then continue where the uninterrupted run's would be.
    `normalize=False` leaves pixel values in [0, 255], for a model that
    normalises its inputs itself (`takes_pixel_values`).
    `data_service`: the address of a tf.data service dispatcher
    (`"grpc://host:port"`) whose workers then make the training batches
    (`TrainPreset.epochs`), or the `data_service.EpochJobs` the processes of
    a run share: each process then receives batches of its part of
    `recipe.batch_size`. Validation stays on this machine.

    Raises ValueError when the training split holds less than one batch, or
    when `recipe.resize_size` is not the size of a prepared folder's squares
    (`source.prepared_size`): it would resize them again.

    The training data is `TrainPreset.epochs`: epoch `e` drawn from
    `(recipe.seed, e)`, so a run resumed at `first_epoch` continues as the
    uninterrupted run would. Memory: the training images are cached
    (decoded once, as central `resize_size` squares of uint8) when they fit
    in `CACHE_BYTES`, and each epoch shuffles all of them. Otherwise the
    file order is shuffled every epoch before decoding and a shuffle buffer
    of decoded squares bounded by `presets.SHUFFLE_BUFFER_BYTES` mixes
    neighbours.

    TensorFlow's global seed is cleared first (`tf.random.set_seed(None)`):
    `tf.data` shuffles seeded with a number combine it with the global seed
    (a split without a known size is shuffled so), so a previous seeded run
    in the same process (`keras.utils.set_random_seed`) would change this
    run's data. The datasets are those of a fresh process.
    """
    import tensorflow as tf

    tf.random.set_seed(None)
    count = source.counts.get("train")
    if count is not None and count < recipe.batch_size:
        raise ValueError(
            f"The training split has {count} images, fewer than one batch of "
            f"{recipe.batch_size}; use a smaller --batch-size."
        )
    if source.prepared_size not in (None, recipe.resize_size):
        raise ValueError(
            f"{source.name} holds squares of {source.prepared_size}x{source.prepared_size}, "
            f"prepared once; train it with resize_size={source.prepared_size} (train.py's "
            "default for a prepared folder): another size would resize them again. Prepare "
            f"the data again at the size you want. Received: resize_size={recipe.resize_size}"
        )
    train_preset = TrainPreset(crop_size=recipe.image_size, resize_size=recipe.resize_size,
                               lighting_std=recipe.lighting_std, policy=recipe.policy,
                               normalize=normalize)
    eval_preset = EvalPreset(crop_size=recipe.image_size, resize_size=recipe.resize_size,
                             normalize=normalize)
    batch_size = recipe.batch_size
    if data_service is not None:
        data_service = EpochJobs.of(data_service)
        check_dispatcher(data_service.service)
        if count is None:
            raise ValueError(f"--data-service needs the size of the training split, which "
                             f"{source.name} does not give; prepare it first (--prepare DIR).")
        if batch_size % data_service.processes:
            raise ValueError(
                f"The global batch size {batch_size} does not divide over the "
                f"{data_service.processes} processes reading the tf.data service; use a "
                f"multiple of {data_service.processes}.")
        batch_size //= data_service.processes
    if count is None:  # a TFDS split without metadata: one pass per epoch
        examples = source.examples("train", shuffle=True, seed=recipe.seed,
                                   skipped_log=skipped_log)
        train = train_preset.dataset(examples, recipe.batch_size, seed=recipe.seed)
        steps = recipe.steps_per_epoch
        if steps is not None:
            train = train.repeat()
    else:
        cache = (data_service is None
                 and count * square_bytes(recipe.resize_size) <= CACHE_BYTES)
        data_epoch_batches = count // recipe.batch_size
        steps = recipe.steps_per_epoch or data_epoch_batches
        # Where the uninterrupted run would be in the stream of batches: a
        # capped --steps-per-epoch makes Keras epochs and data epochs differ.
        data_epoch, offset = divmod(first_epoch * steps, data_epoch_batches)
        train = train_preset.epochs(source, batch_size, seed=recipe.seed,
                                    first_epoch=data_epoch, cache=cache,
                                    skipped_log=skipped_log,
                                    data_service=data_service).skip(offset)
    validation = None
    if "validation" in source.counts:
        source.check_usable("validation")  # the training split's is checked by `epochs`
        validation = eval_preset.dataset(
            source.examples("validation", skipped_log=skipped_log), recipe.batch_size,
            cache=_validation_fits_in_memory(source, eval_preset))
    return train, validation, steps, eval_preset


def _validation_fits_in_memory(source, preset):
    count = source.counts.get("validation")
    # EvalPreset caches float32 crops.
    return count is not None and count * preset.crop_size**2 * 3 * 4 <= CACHE_BYTES


def _recipe_changes(previous, recipe, pretrained=None):
    """`{field: (old, new)}` of recipe fields that differ from a run's `run.json`.

    The values compared are those trained: a run.json that left the variant
    to its default or to the weights file (`pretrained`) trains that one.
    """
    previous = {**previous, "variant": trained_variant(previous.get("variant"), pretrained)}
    current = dataclasses.asdict(recipe)
    return {key: (previous.get(key), value) for key, value in current.items()
            if previous.get(key) != value}


def check_resume(run, settings, recipe, source, pretrained=None):
    """Raises ValueError if `recipe` or `source` would change a run being resumed.

    Only `RESUMABLE_CHANGES` (more epochs, the learning rate) may differ from
    `run.json`, and a run that has done all its epochs continues only with
    more. The source must hold the run's data: the same name, class names,
    examples per split and (a prepared folder) `Source.identity`.
    `pretrained`: the weights file of `recipe.fine_tune`, read.
    Returns a message about what changes, or `None`.
    """
    done = (run.read_checkpoint() or {}).get("epoch", 0)
    if done > recipe.epochs or (done == recipe.epochs and run.is_finished()):
        raise ValueError(
            f"The run in {run.path} has finished {done} epochs; pass more than {done} "
            "--epochs to train it further."
        )
    changes = _recipe_changes(settings["recipe"], recipe, pretrained)
    # The data: the order of a split's examples depends on how many there are, and
    # a prepared folder prepared again may hold others. A run.json from before
    # counts and identities were recorded has neither.
    recorded_counts = settings.get("counts", source.counts)
    data = [("source", settings["source"], source.name),
            ("class_names", settings["class_names"], source.class_names),
            ("prepared folder", settings.get("source_identity", source.identity),
             source.identity)]
    data += [(f"{split} examples", recorded_counts.get(split), source.counts.get(split))
             for split in sorted(set(recorded_counts) | set(source.counts))]
    for key, old, new in data:
        if old != new:
            changes[key] = (old, new)
    refused = {key: change for key, change in changes.items() if key not in RESUMABLE_CHANGES}
    if refused:
        listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in refused.items())
        raise ValueError(
            f"--resume continues a run with the settings it started with; these differ from "
            f"its run.json: {listed}. Leave them out (they are read from run.json) or start "
            "a new run."
        )
    notes = []
    if "epochs" in changes:
        old, new = changes["epochs"]
        notes.append(f"Continuing to {new} epochs (the run started with {old}).")
    if "learning_rate" in changes:
        old, new = changes["learning_rate"]
        notes.append(f"Learning rate {new:g} from epoch {done + 1} on (run.json had {old:g}; "
                     "the schedule's later drops divide it).")
    return " ".join(notes) or None


def train(recipe, source, output, resume=False, overwrite=False, distribute="none",
          export=None, log=print, verbose="auto", arguments=None,
          model_parallel=distribute_lib.PAPER_MODEL_PARALLEL, data_service=None,
          data_service_timeout=STALL_TIMEOUT_SECONDS):
    """Trains AlexNet on a source with a recipe; returns the summary dict.

    Everything is checked before the first file is written: a bad recipe,
    source, output folder, export target, distribution or model-parallel
    layout raises and leaves the disk as it was.

    Over several processes (JAX; `distribute.initialize_processes` first),
    every process calls `train` with the same arguments and trains on its
    part of every global batch. Process 0 alone writes the run folder and
    the export; the others only read the run folder, to resume. The checks
    of every process pass or all processes raise
    (`distribute.start_together`), a recipe without a seed gets one drawn
    by process 0 (recorded in `run.json`, so a resumed run repeats it), and
    the call returns on every process once process 0 has written everything.

    Args:
        recipe: a `Recipe`.
        source: a `keras_alexnet.data.Source`.
        output: the run folder (see the module docstring).
        resume: continue the run in `output` from its last checkpoint; the
            recipe and source must be the run's own (more epochs allowed).
        overwrite: start again, deleting the previous run's files in
            `output` (only a keras-alexnet run's own files: a folder holding
            anything else is refused), and replace a previous SavedModel at
            `export`.
        distribute: `"none"`, `"mirrored"` (TensorFlow), `"data-parallel"` or
            `"model-parallel"` (JAX, over every device of every process; see
            `keras_alexnet.distribute`).
        export: a folder to export the final model to as a SavedModel
            (recorded in `run.json`; a resumed run replaces its own previous
            export there).
        log: where progress lines go.
        verbose: Keras' `fit` verbosity (progress bar).
        arguments: extra settings to record in `run.json` (train.py's data
            arguments, so `--resume` alone can rebuild the source).
        model_parallel: the devices of the model axis with
            `distribute="model-parallel"` (the paper's 2).
        data_service: a tf.data service dispatcher, `"grpc://host:port"`:
            its workers make the training batches (see `make_datasets`).
            Files they cannot decode are named in the workers' logs, not in
            `skipped_files.txt`; one training process says when an epoch
            came short. Several processes share each epoch's job, each
            receiving its own part of every global batch (see
            `data_service.EpochJobs`).
        data_service_timeout: with `data_service`, seconds without a
            training batch after which the process ends with a message and
            status `data_service.EXIT_STALLED` (a worker lost for good;
            see `data_service.StalledServiceWatchdog`).
    """
    run = RunFolder(output)
    num_processes = distribute_lib.process_count()
    writes = distribute_lib.process_index() == 0
    if export is not None:
        export = os.path.abspath(os.path.expanduser(os.fspath(export)))
    with distribute_lib.start_together() as agreed:
        settings = run.check(resume, overwrite, writes=writes)
        # A resumed run replaces its own previous export (of fewer epochs).
        replace_export = overwrite or (resume and export == settings.get("export"))
        if export is not None and writes:
            check_export_target(export, replace_export)
        pretrained = check_fine_tune(recipe, source.num_classes)
        # A fine-tuned run trains the file's variant: run.json records that one.
        recipe = dataclasses.replace(recipe, variant=trained_variant(recipe.variant, pretrained))
        resume_note = (check_resume(run, settings, recipe, source, pretrained) if resume
                       else None)
        checkpoint = run.read_checkpoint() if resume else None
        best = _previous_best(run) if resume else -math.inf
        agreed.update(recipe=dataclasses.asdict(recipe), source=source.name,
                      class_names=source.class_names, counts=source.counts,
                      distribute=distribute, model_parallel=model_parallel,
                      checkpoint=checkpoint, best=best)
    if num_processes > 1 and recipe.seed is None:
        # Every process must shuffle, augment and initialise alike.
        recipe = dataclasses.replace(recipe, seed=distribute_lib.shared_seed())
        log(f"Seed {recipe.seed}, drawn by process 0 for every process (recorded in "
            f"{run / SETTINGS}, so --resume repeats it).")
    initial_epoch = checkpoint["epoch"] if checkpoint else 0
    jobs = None
    if data_service is not None:
        # One name for this session's jobs on every process, and no earlier
        # session's: the service never reuses a job name.
        jobs = EpochJobs(data_service, name=f"keras-alexnet-{distribute_lib.shared_seed():08x}",
                         processes=num_processes)
    scope, replicas = distribute_lib.distribution_scope(distribute, recipe.batch_size,
                                                      model_parallel,
                                                      per_process_data=jobs is not None)
    train_data, validation, steps, eval_preset = make_datasets(
        recipe, source, skipped_log=str(run / SKIPPED_FILES) if writes else None,
        first_epoch=initial_epoch, normalize=not takes_pixel_values(pretrained),
        data_service=jobs)
    if recipe.seed is not None:
        keras.utils.set_random_seed(recipe.seed)
    with scope:
        # Built before anything is written: a layer too narrow to split is an error.
        model = build_model(recipe, source.num_classes, pretrained)
        if resume:
            # The checkpoint restores the optimizer's variables too: created here, in
            # the distribution's scope (MirroredStrategy refuses them outside it).
            model.optimizer.build(model.trainable_variables)
    writer = distribute_lib.ModelWriter(model)

    # Nothing was written before this line.
    if writes:
        run.create(resume, overwrite)
        run.write_settings({
            "recipe": dataclasses.asdict(recipe), "source": source.name,
            "class_names": source.class_names, "counts": source.counts,
            "source_identity": source.identity, "arguments": arguments or {},
            "backend": keras.backend.backend(), "distribute": distribute, "replicas": replicas,
            "model_parallel": model_parallel if distribute == "model-parallel" else None,
            "processes": num_processes, "export": export,
        })
    new_rate = resume and recipe.learning_rate != settings["recipe"]["learning_rate"]
    if resume:
        run.restore_checkpoint(model, roll_back=writes)
        if new_rate:
            # The checkpoint's optimizer holds the old rate (drops included).
            model.optimizer.learning_rate.assign(recipe.learning_rate)
        started = (settings.get("replicas"), settings.get("processes"))
        if started != (replicas, num_processes):
            # Devices and processes belong to one start: the global batches stay the same.
            resume_note = " ".join(filter(None, [resume_note, (
                f"Training on {replicas} replica(s) over {num_processes} process(es) (the "
                f"previous start had {started[0]} over {started[1]}).")]))
        log(f"Resuming {run.path} after epoch {initial_epoch} of {recipe.epochs}."
            + (f" {resume_note}" if resume_note else ""))

    monitor = "val_top1" if validation is not None else "top1"
    schedule = PlateauSchedule(recipe.lr_factor, recipe.lr_patience, recipe.max_lr_drops,
                               monitor=monitor,
                               state=checkpoint["schedule"] if checkpoint else None)
    if new_rate:  # the rate given is the one the next epoch trains at
        schedule.state["pending_drop"] = False
    summary_printer = EpochSummary(recipe.epochs, recipe.batch_size, log)
    skipped_report = SkippedFilesReport(str(run / SKIPPED_FILES), log)
    if writes:
        skipped_report.record(source.skipped)
    callbacks = [
        *([StalledServiceWatchdog(data_service, data_service_timeout)] if data_service else []),
        StopOnNaN(),
        *([Validation(validation, source.num_classes)] if validation is not None else []),
        schedule,
        *([keras.callbacks.CSVLogger(str(run / LOG), append=resume),
           keras.callbacks.TensorBoard(str(run / TENSORBOARD))] if writes else []),
        BestModel(run, monitor, writer, best),
        summary_printer,
        *([skipped_report] if writes else []),
        RunCheckpoint(run, schedule, writer, resumed_from=checkpoint),
    ]
    if pretrained is not None:
        trained = sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)
        log(f"Fine-tuning {recipe.fine_tune}: a new fc8 for {source.num_classes} classes"
            + (f", layers up to {recipe.freeze} frozen" if recipe.freeze else "")
            + f"; {trained:,} of {model.count_params():,} parameters trained.")
    where = f"run folder {run.path}"
    if num_processes > 1:
        where = (f"process {distribute_lib.process_index()} of {num_processes}; "
                 + (where if writes else "process 0 writes the run folder"))
    log(f"Training AlexNet ({recipe.variant}) on {source.name}: {source.num_classes} classes, "
        f"{source.counts}, backend {keras.backend.backend()}, {replicas} replica(s); {where}."
        + (f" Training batches from the tf.data service at {data_service}."
           if data_service else ""))
    started = time.perf_counter()
    try:
        model.fit(train_data, epochs=recipe.epochs, initial_epoch=initial_epoch,
                  steps_per_epoch=steps, callbacks=callbacks, verbose=verbose,
                  shuffle=False)
    except NaNLossError as error:
        kept = run.read_checkpoint()
        raise NaNLossError(
            f"{error} Training stopped. " + (
                f"The checkpoint after epoch {kept['epoch']} is kept in {run / BACKUP}; "
                f"continue it at a lower learning rate with --output {run.path} --resume "
                "--lr RATE." if kept else
                "No epoch had finished, so no checkpoint was kept (only run.json and the "
                "logs); lower --lr and start again with --overwrite.")
        ) from None
    except Exception as error:
        # Any other error is this process's own, and is raised as itself.
        if num_processes == 1 or not distribute_lib.is_collective_failure(error):
            raise
        kept = run.read_checkpoint()
        reason = str(error).splitlines()[0].rstrip(".")
        raise distribute_lib.LostProcessError(
            f"Process {distribute_lib.process_index()} of {num_processes} stopped training: "
            f"{reason}. In a run over several processes, this is how the others learn that "
            "one died or stopped with an error (see its output). "
            + (f"The checkpoint after epoch {kept['epoch']} is kept; " if kept else "")
            + "restart every process with --resume."
        ) from error
    wall_time = time.perf_counter() - started
    with writer.latest() as final_model:
        if final_model is not None:
            final_model.save(run / FINAL_MODEL)

    result = {"top1_error": None, "top5_error": None, "examples": 0}
    if validation is not None:
        final_preset = dataclasses.replace(eval_preset, ten_crop=recipe.ten_crop)
        result = evaluation.evaluate(
            model, final_preset.dataset(source.examples("validation"), recipe.batch_size))
    skipped = skipped_report.names() if writes else []
    summary = {
        **result,
        "evaluation": "10-crop" if recipe.ten_crop else "centre crop",
        "epochs": recipe.epochs,
        "wall_time_seconds": wall_time,
        "images_per_second": (float(np.median(summary_printer.images_per_second))
                              if summary_printer.images_per_second else None),
        "backend": keras.backend.backend(),
        "replicas": replicas,
        "processes": num_processes,
        "chance_top1_error": 1 - 1 / source.num_classes,
        "skipped_files": skipped,
        "data_service": data_service,
        "final_model": str(run / FINAL_MODEL),
        "best_model": str(run / BEST_MODEL),
    }
    with writer.latest() as final_model:
        if final_model is not None:
            if export is not None:
                summary["export"] = export_saved_model(final_model, export,
                                                       class_names=source.class_names,
                                                       preset=eval_preset,
                                                       overwrite=replace_export)
            write_json_atomically(run / SUMMARY, summary)
    # The others return once process 0 has written everything.
    distribute_lib.wait_for_every_process("keras_alexnet.training.train: run written")
    return summary
