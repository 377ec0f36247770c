"""Export to a TensorFlow SavedModel whose serving signature takes raw images.

    keras_alexnet.export_saved_model(model, "exports/alexnet/1", class_names=names)

Signatures of the export:
- `serving_default`: `images`, a uint8 batch `(N, H, W, 3)` of any height and
  width -> `probabilities` `(N, classes)`, `top_k_indices` and
  `top_k_probabilities` `(N, k)`, `top_k_labels` `(N, k)` strings. Inside
  the graph the images go through `EvalPreset.preprocess` (short side to 256,
  central crop, normalisation with the statistics of the model's weights):
  the code the evaluation pipeline runs. A
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
import functools
import importlib
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

from keras_alexnet._validation import check_can_create, check_positive_int
from keras_alexnet.imagenet import imagenet_class_names
from keras_alexnet.models import normalizes_inputs, resolve_outputs
from keras_alexnet.presets import EvalPreset

CLASS_NAMES_ASSET = "class_names.txt"


def export_saved_model(model, path, class_names=None, preset=None, top_k=5,
                       overwrite=False, outputs="auto", custom_objects=None):
    """Writes `model` as a TensorFlow SavedModel at `path`, atomically.

    Args:
        model: a Keras model taking normalised `(N, crop, crop, 3)` images,
            e.g. from `keras_alexnet.AlexNet()`.
        path: the export folder. For TensorFlow Serving use
            `<models>/<name>/<version>` (e.g. `exports/alexnet/1`).
        class_names: the label of each output class; defaults to the
            ILSVRC-2012 names for 1000 classes, else "0", "1", ... Not used
            for `outputs="features"`.
        preset: the `EvalPreset` applied to raw images in `serving_default`;
            by default `EvalPreset.for_model(model)`: crops of the model's
            input size, normalised with the statistics of its weights (see
            `keras_alexnet.models.pixel_statistics`), or not at all when the
            model normalises itself.
        top_k: how many top classes `serving_default` returns.
        overwrite: replace a previous SavedModel at `path`. Without it an
            existing export is an error. Either way a folder that holds
            anything but a SavedModel (a TF Serving base folder with version
            sub-folders, say) or a file is refused and left untouched.
        outputs: what the model outputs: `"probabilities"` (served as they
            are), `"logits"` (served through a softmax), `"features"` (a
            feature extractor, e.g. `include_top=False`: served as
            `features`, with no labels), or `"auto"`: probabilities if the
            model's outputs on two probe batches are non-negative rows
            summing to 1, else logits if the model has a classifier layer
            named `fc8`, else features.
        custom_objects: `{name: class or function}` the model needs to load,
            as for `keras.saving.load_model`. On JAX and PyTorch the export
            runs in a TensorFlow subprocess, which imports the module that
            defines each of these and each registered custom object of the
            model, searching this process's `sys.path`; objects defined in `__main__` (a script or notebook)
            cannot be imported there and are named in the error.

    Returns:
        The export's path.
    """
    path = Path(path).expanduser().resolve()
    crop_size = _square_input_size(model)
    outputs = resolve_outputs(model, outputs)
    if outputs == "features":
        if class_names is not None:
            raise ValueError(
                "A feature extractor's export has no labels: pass class_names=None with "
                f"outputs='features'. Received: {len(class_names)} class names"
            )
        class_names = []
    else:
        class_names = _checked_class_names(model, class_names)
    check_positive_int("top_k", top_k)
    model_normalizes = normalizes_inputs(model)
    preset = preset or EvalPreset.for_model(model)
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
    check_export_target(path, overwrite)
    modules = _modules_to_import(model, custom_objects)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    top_k = min(top_k, max(len(class_names), 1))
    try:
        if keras.backend.backend() == "tensorflow":
            _write_saved_model(model, staging, class_names, preset, top_k, outputs)
        else:
            _write_in_tensorflow_subprocess(model, staging, {
                "class_names": class_names, "preset": dataclasses.asdict(preset),
                "top_k": top_k, "outputs": outputs, "modules": modules,
                "custom_objects": {name: f"{value.__module__}:{value.__qualname__}"
                                   for name, value in (custom_objects or {}).items()},
            })
        _replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(path)


# What `tf.saved_model.save` writes; a folder holding only these is a SavedModel.
SAVED_MODEL_ENTRIES = frozenset({"saved_model.pb", "saved_model.pbtxt", "variables",
                                 "assets", "assets.extra", "fingerprint.pb"})


def check_export_target(path, overwrite=False):
    """Raises unless a SavedModel may be written at `path`; touches nothing.

    A missing path or an empty folder is free, if the folders it is created
    in can be. A previous SavedModel is replaced only with `overwrite`. A
    file, or a folder holding anything but a SavedModel, is refused.
    """
    path = Path(path).expanduser().resolve()
    if not path.exists():
        # Its missing folders are created at the end (of training, for
        # train.py --export): where that cannot work, say so now.
        check_can_create(path, f"the export {str(path)!r}")
        return
    if not path.is_dir():
        raise FileExistsError(f"{path} is a file, not a SavedModel folder; nothing was "
                              "touched. Choose another export path.")
    entries = sorted(entry.name for entry in os.scandir(path))
    if not entries:
        return
    foreign = [name for name in entries if name not in SAVED_MODEL_ENTRIES]
    if foreign or not {"saved_model.pb", "saved_model.pbtxt"} & set(entries):
        versions = [int(name) for name in entries if name.isdigit()]
        hint = (f" To serve a new version beside the others, export to "
                f"{path / str(max(versions) + 1)}." if versions else "")
        raise FileExistsError(
            f"{path} holds {foreign or entries}, which is not a SavedModel; an export "
            f"replaces only a previous SavedModel, so nothing was touched.{hint}"
        )
    if not overwrite:
        raise FileExistsError(
            f"{path} already holds a SavedModel; pass overwrite=True (--overwrite) to "
            "replace it."
        )


def _checked_class_names(model, class_names):
    classes = int(model.output_shape[-1])
    if class_names is None:
        if classes == len(imagenet_class_names()):
            return imagenet_class_names()
        return [str(index) for index in range(classes)]
    class_names = [str(name) for name in class_names]
    if len(class_names) != classes:
        raise ValueError(
            f"`class_names` has {len(class_names)} names but the model has {classes} "
            "outputs."
        )
    bad = [index for index, name in enumerate(class_names)
           if not name or "\n" in name or "\r" in name]
    if bad:
        raise ValueError(
            "Class names must be non-empty and hold no line breaks (they are stored one "
            f"per line). Received: {[class_names[index] for index in bad[:5]]} at "
            f"indices {bad[:5]}"
        )
    return class_names


def _square_input_size(model):
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 3:
        raise ValueError(
            "The model must take square RGB images of a fixed size, (None, size, size, 3). "
            f"Received: input_shape={shape}"
        )
    return shape[1]


def _replace(staging, path):
    """Moves the finished export into place; a previous export is removed only after.

    `path` is missing, an empty folder or a SavedModel (`check_export_target`).
    """
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()
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
    shutil.rmtree(backup)


def _write_saved_model(model, directory, class_names, preset, top_k, outputs):
    with tempfile.TemporaryDirectory() as scratch:
        names_file = None
        if outputs != "features":
            names_file = Path(scratch) / CLASS_NAMES_ASSET
            names_file.write_text("\n".join(class_names) + "\n")
        module = _ServingModule(model, names_file, preset, top_k, outputs)
        signatures = {
            "serving_default": module.serve.get_concrete_function(),
            "predict_preprocessed": module.predict_preprocessed.get_concrete_function(),
        }
        tf.saved_model.save(module, str(directory), signatures=signatures)


class _ServingModule(tf.Module):
    """The exported object: the model, its preprocessing, labels and two signatures."""

    def __init__(self, model, class_names_file, preset, top_k, outputs):
        super().__init__(name="keras_alexnet_serving")
        self.model = model
        self.preset = preset
        self.top_k = top_k
        self.outputs = outputs
        if class_names_file is not None:
            self.class_names_asset = tf.saved_model.Asset(str(class_names_file))
            self.labels = tf.lookup.StaticHashTable(
                tf.lookup.TextFileInitializer(
                    self.class_names_asset, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
                    tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                ),
                default_value="",
            )
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
        if self.outputs == "features":
            return {"features": outputs}
        probabilities = outputs if self.outputs == "probabilities" else tf.nn.softmax(outputs)
        top = tf.math.top_k(probabilities, k=self.top_k)
        return {
            "probabilities": probabilities,
            "top_k_indices": top.indices,
            "top_k_probabilities": top.values,
            "top_k_labels": self.labels.lookup(tf.cast(top.indices, tf.int64)),
        }

    def _predict_preprocessed(self, inputs):
        return {"outputs": tf.cast(self.model(inputs, training=False), tf.float32)}


def _modules_to_import(model, custom_objects):
    """Modules a fresh process must import to load `model`'s `.keras` file.

    Every custom object Keras serialises names the module that defines it;
    keras' and keras_alexnet's own load by themselves. Raises ValueError for
    objects defined in `__main__`, which another process cannot import.
    """
    found = {}

    def visit(item):
        if isinstance(item, dict):
            class_name = item.get("class_name")
            # Keras writes module None for objects of __main__; "__lambda__"
            # and other dunder entries are data (bytecode, tensors), not imports.
            if "module" in item and isinstance(class_name, str) \
                    and not class_name.startswith("__"):
                module = item["module"] or "__main__"
                found.setdefault(module, set()).add(item.get("registered_name") or class_name)
            for value in item.values():
                visit(value)
        elif isinstance(item, (list, tuple)):
            for value in item:
                visit(value)

    visit(keras.saving.serialize_keras_object(model))
    for name, value in (custom_objects or {}).items():
        found.setdefault(value.__module__, set()).add(name)
    own = ("keras", "keras_alexnet", "builtins")
    modules = sorted(module for module in found if module.split(".")[0] not in own)
    if "__main__" in modules and keras.backend.backend() != "tensorflow":
        raise ValueError(
            f"The model uses {sorted(found['__main__'])}, defined in __main__ (a script or "
            f"notebook). On the {keras.backend.backend()} backend the export loads the "
            "model in a TensorFlow subprocess, which cannot import __main__: move them "
            "into an importable module (e.g. my_layers.py next to your script), or export "
            "under KERAS_BACKEND=tensorflow."
        )
    return modules


def _write_in_tensorflow_subprocess(model, directory, settings):
    with tempfile.TemporaryDirectory() as scratch:
        model_file = Path(scratch) / "model.keras"
        model.save(model_file)
        settings_file = Path(scratch) / "settings.json"
        settings_file.write_text(json.dumps(settings))
        command = [sys.executable, "-m", "keras_alexnet.export", str(model_file),
                   str(directory), str(settings_file)]
        # The user's modules must import in the subprocess as they do here:
        # from this process's import path (a script's own folder, entries a
        # notebook added), not only the working folder. "" is the working folder.
        python_path = os.pathsep.join(
            os.path.abspath(entry or os.curdir) for entry in sys.path if isinstance(entry, str))
        env = {**os.environ, "KERAS_BACKEND": "tensorflow", "PYTHONPATH": python_path}
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
    for module in settings["modules"]:
        importlib.import_module(module)
    custom_objects = {}
    for name, location in settings["custom_objects"].items():
        module, qualname = location.split(":")
        custom_objects[name] = functools.reduce(getattr, qualname.split("."),
                                                importlib.import_module(module))
    # The file was written a moment ago by export_saved_model from the user's
    # own model: loading it may run its Lambda layers' code.
    model = keras.saving.load_model(args.model_file, custom_objects=custom_objects,
                                    compile=False, safe_mode=False)
    preset = EvalPreset(**{key: tuple(value) if isinstance(value, list) else value
                           for key, value in settings["preset"].items()})
    _write_saved_model(model, args.directory, settings["class_names"], preset,
                       settings["top_k"], settings["outputs"])


if __name__ == "__main__":
    _main()
