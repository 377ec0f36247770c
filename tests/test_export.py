"""SavedModel export from the current backend, reloaded by TensorFlow alone."""

import json
import os
import subprocess
import sys
import textwrap

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


def test_export_reloads_in_plain_tensorflow(model, tmp_path):
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


def test_preprocessed_signature_returns_raw_outputs(model, tmp_path):
    path = export_saved_model(model, tmp_path / "export")
    loaded = tf.saved_model.load(path)
    inputs = np.random.default_rng(1).normal(size=(3, SIZE, SIZE, 3)).astype("float32")
    outputs = loaded.signatures["predict_preprocessed"](inputs=tf.constant(inputs))["outputs"]
    expected = keras.ops.convert_to_numpy(model(inputs, training=False))
    np.testing.assert_allclose(outputs.numpy(), expected, atol=1e-4)


def test_existing_export_is_not_overwritten(model, tmp_path):
    target = tmp_path / "export"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_saved_model(model, target)
    assert (target / "keep.txt").read_text() == "precious"
    export_saved_model(model, target, overwrite=True)
    assert not (target / "keep.txt").exists()
    assert (target / "saved_model.pb").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no staging left behind


def test_failed_export_leaves_nothing(model, tmp_path):
    with pytest.raises(ValueError, match="class_names"):
        export_saved_model(model, tmp_path / "export", class_names=["only_one"])
    with pytest.raises(ValueError, match="square RGB"):
        export_saved_model(AlexNet(include_top=False, input_shape=(None, None, 3)),
                           tmp_path / "export")
    assert list(tmp_path.iterdir()) == []
