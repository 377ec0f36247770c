"""Export to a TensorFlow SavedModel whose serving signature takes raw images.

    keras_alexnet.export_saved_model(model, "exports/alexnet/1", class_names=names)

Signatures of the export:
- `serving_default`: `images`, a uint8 batch `(N, H, W, 3)` of any height and
  width -> `probabilities` `(N, classes)`, `top_k_indices` and
  `top_k_probabilities` `(N, k)`, `top_k_labels` `(N, k)` strings. Inside
  the graph the images go through `EvalPreset.preprocess` (short side to 256,
  central crop, normalisation): the code the evaluation pipeline runs. A
  model that normalises its inputs itself (`include_preprocessing=True`)
  gets the crops as pixel values and normalises them with its own constants.
- `predict_preprocessed`: `inputs`, float32 `(N, crop, crop, 3)` already
  preprocessed (for a self-normalising model: cropped pixel values in
  [0, 255]) -> `outputs`, the model's raw output.

The class names are stored as the asset `class_names.txt` (one per line,
line `i` is class `i`); a 1000-class model gets the ILSVRC-2012 names by
default.

On the TensorFlow backend the model is exported in-process. On JAX and
PyTorch the same architecture is rebuilt under TensorFlow in a subprocess
from a `.keras` copy (weights are backend-neutral) and exported there: Keras'
own torch export needs torch_xla, and a native TensorFlow graph (with the
fused LRN kernel and per-group convolutions) serves faster than a jax2tf one.
"""

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import keras
import tensorflow as tf

from keras_alexnet._validation import check_positive_int
from keras_alexnet.imagenet import imagenet_class_names
from keras_alexnet.models import normalizes_inputs
from keras_alexnet.presets import EvalPreset

CLASS_NAMES_ASSET = "class_names.txt"


def export_saved_model(model, path, class_names=None, preset=None, top_k=5,
                       overwrite=False):
    """Writes `model` as a TensorFlow SavedModel at `path`, atomically.

    Args:
        model: a Keras model taking normalised `(N, crop, crop, 3)` images,
            e.g. from `keras_alexnet.AlexNet()`.
        path: the export folder. For TensorFlow Serving use
            `<models>/<name>/<version>` (e.g. `exports/alexnet/1`).
        class_names: the label of each output class; defaults to the
            ILSVRC-2012 names for 1000 classes, else "0", "1", ...
        preset: the `EvalPreset` applied to raw images in `serving_default`;
            by default one whose crop matches the model's input size, which
            does not normalise when the model does so itself.
        top_k: how many top classes `serving_default` returns.
        overwrite: replace an existing export at `path`. Without it an
            existing `path` is an error and is left untouched.

    Returns:
        The export's path.
    """
    path = Path(path).expanduser().resolve()
    crop_size = _square_input_size(model)
    classes = int(model.output_shape[-1])
    if class_names is None:
        class_names = (imagenet_class_names() if classes == len(imagenet_class_names())
                       else range(classes))
    class_names = [str(name) for name in class_names]
    if len(class_names) != classes:
        raise ValueError(
            f"`class_names` has {len(class_names)} names but the model has {classes} "
            "outputs."
        )
    if any("\n" in name or "\r" in name for name in class_names):
        raise ValueError("Class names must not contain line breaks.")
    check_positive_int("top_k", top_k)
    model_normalizes = normalizes_inputs(model)
    preset = preset or EvalPreset(crop_size=crop_size, resize_size=max(256, crop_size),
                                  normalize=not model_normalizes)
    if preset.crop_size != crop_size or preset.ten_crop:
        raise ValueError(
            f"`preset` must make single {crop_size}x{crop_size} crops for this model. "
            f"Received: preset={preset}"
        )
    if preset.normalize and model_normalizes:
        raise ValueError(
            "The model normalises its inputs itself (include_preprocessing=True); a "
            "`preset` that normalises too would do it twice: pass normalize=False. "
            f"Received: preset={preset}"
        )
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} already exists; pass overwrite=True (--overwrite) to replace it."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        if keras.backend.backend() == "tensorflow":
            _write_saved_model(model, staging, class_names, preset, min(top_k, classes))
        else:
            _write_in_tensorflow_subprocess(model, staging, class_names, preset,
                                            min(top_k, classes))
        _replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(path)


def _square_input_size(model):
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 3:
        raise ValueError(
            "The model must take square RGB images of a fixed size, (None, size, size, 3). "
            f"Received: input_shape={shape}"
        )
    return shape[1]


def _replace(staging, path):
    """Moves the finished export into place; an old export is removed only after."""
    if not path.exists():
        os.rename(staging, path)
        return
    backup = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(path, backup)
    try:
        os.rename(staging, path)
    except OSError:
        os.rename(backup, path)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def _write_saved_model(model, directory, class_names, preset, top_k):
    directory = Path(directory)
    with tempfile.TemporaryDirectory() as scratch:
        names_file = Path(scratch) / CLASS_NAMES_ASSET
        names_file.write_text("\n".join(class_names) + "\n")
        module = _ServingModule(model, str(names_file), preset, top_k)
        signatures = {
            "serving_default": module.serve.get_concrete_function(),
            "predict_preprocessed": module.predict_preprocessed.get_concrete_function(),
        }
        tf.saved_model.save(module, str(directory), signatures=signatures)


class _ServingModule(tf.Module):
    """The exported object: the model, its preprocessing, labels and two signatures."""

    def __init__(self, model, class_names_file, preset, top_k):
        super().__init__(name="keras_alexnet_serving")
        self.model = model
        self.preset = preset
        self.top_k = top_k
        self.class_names_asset = tf.saved_model.Asset(class_names_file)
        self.labels = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                self.class_names_asset, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
                tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
            ),
            default_value="",
        )
        activation = getattr(model.layers[-1], "activation", None)
        self.outputs_are_probabilities = activation is keras.activations.softmax
        crop = preset.crop_size
        self.serve = tf.function(
            self._serve,
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")],
        )
        self.predict_preprocessed = tf.function(
            self._predict_preprocessed,
            input_signature=[tf.TensorSpec([None, crop, crop, 3], tf.float32,
                                           name="inputs")],
        )

    def _serve(self, images):
        outputs = self.model(self.preset.preprocess(images), training=False)
        outputs = tf.cast(outputs, tf.float32)
        probabilities = outputs if self.outputs_are_probabilities else tf.nn.softmax(outputs)
        top = tf.math.top_k(probabilities, k=self.top_k)
        return {
            "probabilities": probabilities,
            "top_k_indices": top.indices,
            "top_k_probabilities": top.values,
            "top_k_labels": self.labels.lookup(tf.cast(top.indices, tf.int64)),
        }

    def _predict_preprocessed(self, inputs):
        return {"outputs": tf.cast(self.model(inputs, training=False), tf.float32)}


def _write_in_tensorflow_subprocess(model, directory, class_names, preset, top_k):
    with tempfile.TemporaryDirectory() as scratch:
        model_file = Path(scratch) / "model.keras"
        model.save(model_file)
        settings = Path(scratch) / "settings.json"
        settings.write_text(json.dumps({
            "class_names": class_names,
            "preset": dataclasses.asdict(preset),
            "top_k": top_k,
        }))
        command = [sys.executable, "-m", "keras_alexnet.export", str(model_file),
                   str(directory), str(settings)]
        env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(
                "Exporting under TensorFlow failed:\n" + result.stderr[-4000:]
            )


def _main():
    parser = argparse.ArgumentParser(
        description="Exports a .keras model as a SavedModel (used by export_saved_model "
                    "on the JAX and PyTorch backends).")
    parser.add_argument("model_file")
    parser.add_argument("directory")
    parser.add_argument("settings")
    args = parser.parse_args()
    import keras_alexnet  # noqa: F401  registers the custom layers

    settings = json.loads(Path(args.settings).read_text())
    model = keras.saving.load_model(args.model_file, compile=False)
    preset = EvalPreset(**{key: tuple(value) if isinstance(value, list) else value
                           for key, value in settings["preset"].items()})
    _write_saved_model(model, args.directory, settings["class_names"], preset,
                       settings["top_k"])


if __name__ == "__main__":
    _main()
