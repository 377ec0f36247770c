"""The shipped ILSVRC-2012 classes and decode_predictions."""

import shutil
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_alexnet
from keras_alexnet.imagenet import imagenet_class_names, imagenet_classes
from tests.real_torchvision import import_torchvision


@pytest.mark.backend_independent
def test_classes_are_ilsvrc_2012_in_class_index_order():
    classes = imagenet_classes()
    wnids = [wnid for wnid, _ in classes]
    assert len(classes) == 1000 and len(set(wnids)) == 1000
    assert wnids == sorted(wnids)  # ILSVRC-2012 class indices follow the sorted wnids
    assert classes[0] == ("n01440764", "tench")
    assert classes[999] == ("n15075141", "toilet tissue")
    # TensorFlow Datasets' imagenet2012 labels: the class indices of its dataset.
    tfds_labels = resources.files("tensorflow_datasets").joinpath(
        "datasets/imagenet2012/labels.txt").read_text().split()
    assert wnids == tfds_labels


@pytest.mark.backend_independent
def test_names_are_torchvisions():
    torchvision = import_torchvision()
    categories = torchvision.models.AlexNet_Weights.IMAGENET1K_V1.meta["categories"]
    assert imagenet_class_names() == categories


def test_decode_predictions_like_keras_applications():
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(1000), size=3).astype("float32")
    decoded = keras_alexnet.decode_predictions(keras.ops.convert_to_tensor(probabilities),
                                               top=4)
    assert len(decoded) == 3
    for row, labels in zip(probabilities, decoded):
        best = np.argsort(-row)[:4]
        assert [label[:2] for label in labels] == [imagenet_classes()[i] for i in best]
        np.testing.assert_allclose([label[2] for label in labels], row[best])
    one_hot = np.eye(1000, dtype="float32")[[0, 999]]
    assert keras_alexnet.decode_predictions(one_hot, top=1) == [
        [("n01440764", "tench", 1.0)], [("n15075141", "toilet tissue", 1.0)]]


@pytest.mark.backend_independent
@pytest.mark.parametrize("probabilities,top,message", [
    (np.zeros((2, 10)), 5, r"Received: shape=\(2, 10\)"),
    (np.zeros(1000), 5, r"Received: shape=\(1000,\)"),
    (np.zeros((1, 1000)), 0, "Received: top=0"),
])
def test_decode_predictions_rejects_bad_input(probabilities, top, message):
    with pytest.raises(ValueError, match=message):
        keras_alexnet.decode_predictions(probabilities, top=top)


@pytest.mark.backend_independent
def test_the_classes_file_is_in_the_wheel(tmp_path):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("packaging does not depend on the backend: checked once")
    # Build from a copy: setuptools writes build/ and egg-info next to the sources.
    root, source = Path(__file__).resolve().parents[1], tmp_path / "source"
    shutil.copytree(root / "keras_alexnet", source / "keras_alexnet",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source / name)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--quiet", "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("keras_alexnet-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = archive.read("keras_alexnet/imagenet_classes.tsv").decode()
    assert shipped.splitlines()[0] == "n01440764\ttench"
    assert len(shipped.splitlines()) == 1000
