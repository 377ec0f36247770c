"""SavedModel export from the current backend, reloaded by TensorFlow alone."""

import importlib
import json
import os
import subprocess
import sys
import textwrap
import uuid

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_alexnet import AlexNet, export_saved_model
from keras_alexnet.presets import EvalPreset

SIZE = 67
CLASSES = ["cat", "dog", "ship", "tree", "car", "sun"]

# Runs in a fresh process that imports TensorFlow and nothing of keras_alexnet.
RELOAD_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    export, images_file, out_file = sys.argv[1:]
    loaded = tf.saved_model.load(export)
    result = {}
    images = np.load(images_file)
    for batch in (1, 7):
        outputs = loaded.signatures["serving_default"](images=tf.constant(images[:batch]))
        result[batch] = {key: value.numpy().tolist() for key, value in outputs.items()
                         if value.dtype != tf.string}
        result[batch]["top_k_labels"] = [[label.decode() for label in row]
                                         for row in outputs["top_k_labels"].numpy()]
    assert not any(name.startswith("keras_alexnet") for name in sys.modules)
    with open(out_file, "w") as handle:
        json.dump(result, handle)
""")


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return AlexNet(input_shape=(SIZE, SIZE, 3), classes=len(CLASSES), initialization="glorot")


@pytest.fixture(scope="module")
def zfnet_model():
    keras.utils.set_random_seed(0)
    return AlexNet(variant="zfnet", input_shape=(SIZE, SIZE, 3), classes=len(CLASSES),
                   initialization="glorot")


@pytest.mark.parametrize("fixture", ["model", "zfnet_model"])
def test_export_reloads_in_plain_tensorflow(fixture, request, tmp_path):
    model = request.getfixturevalue(fixture)
    path = export_saved_model(model, tmp_path / "alexnet" / "1", class_names=CLASSES)
    assert (tmp_path / "alexnet" / "1" / "assets" / "class_names.txt").read_text().split() \
        == CLASSES
    images = np.random.default_rng(0).integers(0, 256, (7, 90, 120, 3), dtype=np.uint8)
    images_file, out_file = tmp_path / "images.npy", tmp_path / "out.json"
    np.save(images_file, images)
    result = subprocess.run(
        [sys.executable, "-c", RELOAD_SCRIPT, path, str(images_file), str(out_file)],
        env={**os.environ}, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    served = json.loads(out_file.read_text())

    preset = EvalPreset(crop_size=SIZE, resize_size=256)
    expected = keras.ops.convert_to_numpy(
        model(preset.preprocess(tf.constant(images)).numpy(), training=False))
    for batch in ("1", "7"):
        probabilities = np.array(served[batch]["probabilities"])
        np.testing.assert_allclose(probabilities, expected[: int(batch)], atol=1e-4)
        top = np.argsort(-expected[: int(batch)], axis=1)[:, :5]
        np.testing.assert_array_equal(served[batch]["top_k_indices"], top)
        assert served[batch]["top_k_labels"] == [[CLASSES[i] for i in row] for row in top]


@pytest.mark.backend_independent
def test_preprocessed_signature_returns_raw_outputs(model, tmp_path):
    path = export_saved_model(model, tmp_path / "export")
    loaded = tf.saved_model.load(path)
    inputs = np.random.default_rng(1).normal(size=(3, SIZE, SIZE, 3)).astype("float32")
    outputs = loaded.signatures["predict_preprocessed"](inputs=tf.constant(inputs))["outputs"]
    expected = keras.ops.convert_to_numpy(model(inputs, training=False))
    np.testing.assert_allclose(outputs.numpy(), expected, atol=1e-4)


@pytest.mark.backend_independent
def test_only_a_previous_savedmodel_is_ever_overwritten(model, tmp_path):
    target = export_saved_model(model, tmp_path / "export")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_saved_model(model, target)
    export_saved_model(model, target, overwrite=True)
    assert (tmp_path / "export" / "saved_model.pb").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no staging or backup left

    # A TF Serving base folder: versions and a README are never replaced.
    base = tmp_path / "serving"
    export_saved_model(model, base / "1")
    (base / "2").mkdir()
    (base / "README").write_text("mine")
    before = sorted(str(p.relative_to(base)) for p in base.rglob("*"))
    with pytest.raises(FileExistsError, match=r"not a SavedModel.*export to .*serving/3"):
        export_saved_model(model, base, overwrite=True)
    assert sorted(str(p.relative_to(base)) for p in base.rglob("*")) == before
    assert (base / "README").read_text() == "mine"

    # A file is not replaced either, and no backup is left beside it.
    afile = tmp_path / "afile"
    afile.write_text("data")
    with pytest.raises(FileExistsError, match="is a file"):
        export_saved_model(model, afile, overwrite=True)
    assert afile.read_text() == "data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "export", "serving"]


@pytest.mark.backend_independent
def test_served_probabilities_decided_from_what_the_model_outputs(tmp_path):
    """A model that ends in softmax anywhere (a wrapper, a Softmax layer) is not
    softmaxed twice; logits are."""
    keras.utils.set_random_seed(1)
    inner = AlexNet(input_shape=(SIZE, SIZE, 3), classes=3, initialization="glorot")
    wrapped = keras.Sequential([keras.Input((SIZE, SIZE, 3)), inner])
    logits = AlexNet(input_shape=(SIZE, SIZE, 3), classes=3, initialization="glorot",
                     classifier_activation=None)
    softmax_layer = keras.Model(logits.input, keras.layers.Softmax()(logits.output))
    images = np.random.default_rng(2).integers(0, 256, (4, 80, 80, 3), dtype=np.uint8)
    preset = EvalPreset(crop_size=SIZE, resize_size=256)
    inputs = preset.preprocess(tf.constant(images)).numpy()
    for name, exported, expected in [
        ("wrapped", wrapped, keras.ops.convert_to_numpy(wrapped(inputs))),
        ("softmax_layer", softmax_layer, keras.ops.convert_to_numpy(softmax_layer(inputs))),
        ("logits", logits, keras.ops.convert_to_numpy(keras.ops.softmax(logits(inputs)))),
    ]:
        path = export_saved_model(exported, tmp_path / name)
        served = tf.saved_model.load(path).signatures["serving_default"](
            images=tf.constant(images))["probabilities"].numpy()
        np.testing.assert_allclose(served, expected, atol=1e-5, err_msg=name)
    with pytest.raises(ValueError, match="outputs"):
        export_saved_model(logits, tmp_path / "bad", outputs="probability")


@pytest.mark.backend_independent
def test_a_wrapped_self_normalising_model_is_served_pixels(tmp_path):
    """A model wrapping `AlexNet(include_preprocessing=True)` normalises its inputs
    itself too: the export feeds it cropped pixel values, normalised once."""
    keras.utils.set_random_seed(4)
    inner = AlexNet(input_shape=(SIZE, SIZE, 3), classes=3, initialization="glorot",
                    include_preprocessing=True)
    wrapped = keras.Sequential([keras.Input((SIZE, SIZE, 3)), inner])
    images = np.random.default_rng(5).integers(0, 256, (3, 80, 70, 3), dtype=np.uint8)
    pixels = EvalPreset(crop_size=SIZE, resize_size=256, normalize=False).preprocess(
        tf.constant(images)).numpy()
    expected = keras.ops.convert_to_numpy(inner(pixels, training=False))
    path = export_saved_model(wrapped, tmp_path / "wrapped")
    served = tf.saved_model.load(path).signatures["serving_default"](
        images=tf.constant(images))["probabilities"].numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)


@pytest.mark.backend_independent
def test_feature_extractors_export_features_without_labels(tmp_path):
    keras.utils.set_random_seed(0)
    for pooling, shape in ((None, (2, 1, 1, 256)), ("avg", (2, 256))):
        extractor = AlexNet(include_top=False, pooling=pooling, input_shape=(SIZE, SIZE, 3),
                            initialization="glorot")
        path = export_saved_model(extractor, tmp_path / str(pooling))
        images = np.random.default_rng(0).integers(0, 256, (2, 70, 90, 3), dtype=np.uint8)
        outputs = tf.saved_model.load(path).signatures["serving_default"](
            images=tf.constant(images))
        assert list(outputs) == ["features"]
        expected = extractor(EvalPreset(crop_size=SIZE, resize_size=256).preprocess(
            tf.constant(images)).numpy())
        assert outputs["features"].shape == shape
        np.testing.assert_allclose(outputs["features"].numpy(),
                                   keras.ops.convert_to_numpy(expected), rtol=1e-4, atol=1e-4)
        assert not (tmp_path / str(pooling) / "assets" / "class_names.txt").exists()
        with pytest.raises(ValueError, match="no labels"):
            export_saved_model(extractor, tmp_path / "x", class_names=["a"])


@pytest.mark.backend_independent
def test_class_names_are_checked_up_front(model, tmp_path):
    names = list(CLASSES)
    names[2] = ""
    with pytest.raises(ValueError, match=r"non-empty.*\[''\] at indices \[2\]"):
        export_saved_model(model, tmp_path / "export", class_names=names)
    assert list(tmp_path.iterdir()) == []


@keras.saving.register_keras_serializable(package="user")
class Scale(keras.layers.Layer):
    """A user's custom layer, registered in an importable module (this test file)."""

    def call(self, inputs):
        return inputs * 2.0


def test_custom_layers_and_lambdas_export_from_every_backend(tmp_path):
    keras.utils.set_random_seed(0)
    base = AlexNet(input_shape=(SIZE, SIZE, 3), classes=3, initialization="glorot",
                   classifier_activation=None)
    scaled = Scale()(base.output)
    halved = keras.layers.Lambda(lambda x: x * 0.5)(scaled)
    custom = keras.Model(base.input, halved)
    images = np.random.default_rng(3).integers(0, 256, (2, 70, 70, 3), dtype=np.uint8)
    inputs = EvalPreset(crop_size=SIZE, resize_size=256).preprocess(tf.constant(images)).numpy()
    expected = keras.ops.convert_to_numpy(keras.ops.softmax(custom(inputs)))
    path = export_saved_model(custom, tmp_path / "custom", outputs="logits")
    served = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=1e-5)


def test_custom_layers_import_from_the_callers_path_in_any_folder(tmp_path, monkeypatch):
    """A user's module found through `sys.path` (beside their script, say), exported
    with another working folder: the TensorFlow subprocess imports it too."""
    module_name = f"user_layers_{uuid.uuid4().hex[:8]}"
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / f"{module_name}.py").write_text(textwrap.dedent(f"""
        import keras

        @keras.saving.register_keras_serializable(package="{module_name}")
        class Shift(keras.layers.Layer):
            def call(self, inputs):
                return inputs + 1.0
    """))
    monkeypatch.syspath_prepend(str(tmp_path / "scripts"))
    monkeypatch.chdir(tmp_path)  # neither the module's folder nor the package's
    shift = importlib.import_module(module_name).Shift
    keras.utils.set_random_seed(0)
    base = AlexNet(input_shape=(SIZE, SIZE, 3), classes=3, initialization="glorot",
                   classifier_activation=None)
    custom = keras.Model(base.input, shift()(base.output))
    images = np.random.default_rng(6).integers(0, 256, (2, 70, 70, 3), dtype=np.uint8)
    inputs = EvalPreset(crop_size=SIZE, resize_size=256).preprocess(tf.constant(images)).numpy()
    scores = keras.ops.convert_to_numpy(custom(inputs)).astype("float64")
    expected = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    path = export_saved_model(custom, tmp_path / "export", outputs="logits")
    served = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=1e-5)


def test_objects_defined_in_main_are_named_off_tensorflow(tmp_path):
    if keras.backend.backend() == "tensorflow":
        pytest.skip("TensorFlow exports in-process and needs no import")
    layer_class = type("MainScale", (keras.layers.Layer,), {
        "call": lambda self, inputs: inputs, "__module__": "__main__"})
    keras.saving.register_keras_serializable(package="main")(layer_class)
    base = AlexNet(input_shape=(SIZE, SIZE, 3), classes=3, initialization="glorot")
    custom = keras.Model(base.input, layer_class()(base.output))
    with pytest.raises(ValueError, match=r"main>MainScale.*defined in __main__"):
        export_saved_model(custom, tmp_path / "custom")
    assert list(tmp_path.iterdir()) == []


def test_failed_export_leaves_nothing(model, tmp_path):
    with pytest.raises(ValueError, match="class_names"):
        export_saved_model(model, tmp_path / "export", class_names=["only_one"])
    with pytest.raises(ValueError, match="square RGB"):
        export_saved_model(AlexNet(include_top=False, input_shape=(None, None, 3)),
                           tmp_path / "export")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.backend_independent
def test_an_export_under_a_file_is_refused_before_anything_is_written(tmp_path):
    """`train.py --export` checks its target before training: a path whose folders
    cannot be created is a ValueError then, not an OSError at the end."""
    from keras_alexnet.export import check_export_target

    (tmp_path / "afile").write_text("data")
    with pytest.raises(ValueError, match=r"afile is not a folder"):
        check_export_target(tmp_path / "afile" / "serving" / "1")
    check_export_target(tmp_path / "new" / "serving" / "1")  # created when exporting
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
