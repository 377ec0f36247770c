"""`python -m keras_alexnet.predict` and a SavedModel export of pretrained weights,
checked against Caffe's semantics (tests/caffe_reference.py)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_alexnet import AlexNet, export_saved_model, predict
from keras_alexnet.imagenet import imagenet_class_names
from keras_alexnet.presets import EvalPreset
from tests.caffe_reference import (
    bvlc_alexnet_layers,
    caffe_forward,
    peaked,
    random_weights,
    write_caffemodel,
)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A PNG and a JPEG of other sizes than the model's input."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (26, 30, 3)), np.ones((10, 10, 1))).astype("uint8")
    Image.fromarray(smooth).save(folder / "photo.png")
    Image.fromarray(rng.integers(0, 256, (350, 200, 3), dtype=np.uint8)).save(
        folder / "photo.jpg", quality=90)
    return folder / "photo.png", folder / "photo.jpg", smooth


@pytest.fixture(scope="module")
def caffemodel(photos, tmp_path_factory):
    crop = EvalPreset(normalize=False).preprocess(photos[2][None]).numpy()
    weights = peaked(random_weights(0), crop)
    path = tmp_path_factory.mktemp("caffe") / "bvlc_alexnet.caffemodel"
    write_caffemodel(path, bvlc_alexnet_layers(weights))
    return str(path), weights


def test_predict_prints_the_top_5_of_the_centre_crop(caffemodel, photos, capsys):
    path, weights = caffemodel
    png, jpg, pixels = photos
    assert predict.main(["--weights", path, str(png), str(jpg)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(png) and lines[6] == str(jpg) and len(lines) == 12
    crop = EvalPreset(crop_size=227, resize_size=256, normalize=False).preprocess(pixels[None])
    expected = caffe_forward(weights, crop.numpy())["probabilities"][0]
    best = np.argsort(-expected)[:5]
    printed = [line.split(maxsplit=2) for line in lines[1:6]]
    assert [label for _, _, label in printed] == [imagenet_class_names()[i] for i in best]
    assert [float(value.rstrip("%")) for _, value, _ in printed] == pytest.approx(
        100 * expected[best], abs=0.006)


def test_ten_crop_averages_the_papers_crops(caffemodel, photos):
    path, weights = caffemodel
    png, _, pixels = photos
    model = predict.load_model(path)
    ((_, labels),) = predict.classify(model, [str(png)], ten_crop=True, top=3)
    crops = EvalPreset(ten_crop=True, normalize=False).ten_crops(pixels).numpy()
    expected = caffe_forward(weights, crops)["probabilities"].mean(axis=0)
    best = np.argsort(-expected)[:3]
    assert [label for label, _ in labels] == [imagenet_class_names()[i] for i in best]
    np.testing.assert_allclose([value for _, value in labels], expected[best], atol=1e-4)


def test_softmax_is_applied_once_wherever_the_model_has_it(photos, tmp_path):
    """A .keras model ending in a Softmax layer or wrapping a softmax AlexNet gives
    the softmax of its logits, not the softmax of its probabilities."""
    png, _, pixels = photos
    keras.utils.set_random_seed(3)
    logits = AlexNet(input_shape=(67, 67, 3), classes=3, initialization="glorot",
                     include_preprocessing=True, classifier_activation=None)
    crop = EvalPreset(crop_size=67, normalize=False).preprocess(pixels[None]).numpy()
    # Logits spread by about 2, so that probabilities and their softmax differ clearly.
    spread = np.ptp(keras.ops.convert_to_numpy(logits(crop, training=False)))
    fc8 = logits.get_layer("fc8")
    fc8.kernel.assign(fc8.kernel * (2.0 / spread))
    with_softmax = AlexNet(input_shape=(67, 67, 3), classes=3, include_preprocessing=True)
    with_softmax.set_weights(logits.get_weights())
    models = {
        "logits": logits,
        "softmax_layer": keras.Model(logits.input, keras.layers.Softmax()(logits.output)),
        "wrapped": keras.Sequential([keras.Input((67, 67, 3)), with_softmax]),
    }
    scores = keras.ops.convert_to_numpy(logits(crop, training=False))[0].astype("float64")
    expected = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    assert expected.max() - expected.min() > 0.05  # a second softmax would show
    for name, model in models.items():
        model.save(tmp_path / f"{name}.keras")
        loaded = predict.load_model(str(tmp_path / f"{name}.keras"))
        ((_, labels),) = predict.classify(loaded, [str(png)], top=3)
        np.testing.assert_allclose([value for _, value in labels],
                                   np.sort(expected)[::-1], atol=1e-5, err_msg=name)
        assert [label for label, _ in labels] == [str(i) for i in np.argsort(-expected)]


def test_a_keras_model_under_the_home_folder_loads(photos, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    keras.utils.set_random_seed(5)
    model = AlexNet(input_shape=(67, 67, 3), classes=3, include_preprocessing=True)
    model.save(tmp_path / "small.keras")
    loaded = predict.load_model("~/small.keras")
    for saved, restored in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(restored),
                                      keras.ops.convert_to_numpy(saved))
    assert predict.main(["--weights", "~/small.keras", "--top", "3", str(photos[0])]) == 0
    assert capsys.readouterr().out.splitlines()[0] == str(photos[0])


def test_predict_bad_input_exits_2(caffemodel, tmp_path, capsys):
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("not an image")
    assert predict.main(["--weights", caffemodel[0], str(not_an_image)]) == 2
    assert "notes.jpg is not a readable image" in capsys.readouterr().err
    assert predict.main(["--weights", "weights.npz", str(not_an_image)]) == 2
    assert "weights='weights.npz'" in capsys.readouterr().err


def test_a_folder_is_every_image_in_it_and_a_bad_one_stops_no_other(caffemodel, photos,
                                                                    tmp_path, capsys):
    png, jpg, _ = photos
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    (folder / "b.png").write_bytes(png.read_bytes())
    (folder / "more" / "c.jpg").write_bytes(jpg.read_bytes())
    (folder / "a.jpg").write_text("not an image")
    (folder / "notes.txt").write_text("not an image file name either: left out")
    (folder / ".hidden.png").write_bytes(png.read_bytes())
    assert predict.main(["--weights", caffemodel[0], str(folder)]) == 2
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    # Both good images, in name order, each with its top 5, as when named one by one.
    assert [lines[0], lines[6]] == [str(folder / "b.png"), str(folder / "more" / "c.jpg")]
    assert predict.main(["--weights", caffemodel[0], str(png), str(jpg)]) == 0
    alone = capsys.readouterr().out.splitlines()
    assert lines[1:6] == alone[1:6] and lines[7:12] == alone[7:12] and len(lines) == 12
    assert f"{folder / 'a.jpg'} is not a readable image" in captured.err
    assert "1 of 3 images could not be read" in captured.err
    assert predict.main(["--weights", caffemodel[0], str(folder / "more" / "missing")]) == 2
    assert "missing does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert predict.main(["--weights", caffemodel[0], str(tmp_path / "empty")]) == 2
    assert "holds no image files" in capsys.readouterr().err


def test_export_of_pretrained_weights_serves_raw_images_with_imagenet_labels(tmp_path):
    """A 67x67-input bvlc_alexnet with 1000 classes: the export normalises once, with
    Caffe's mean, and labels with the ILSVRC-2012 names."""
    images = np.random.default_rng(2).integers(0, 256, (3, 90, 120, 3), dtype=np.uint8)
    preset = EvalPreset(crop_size=67, resize_size=256, normalize=False)
    crops = preset.preprocess(tf.constant(images)).numpy()
    weights = peaked(random_weights(1, pool5_size=1), crops)
    caffemodel = tmp_path / "small.caffemodel"
    write_caffemodel(caffemodel, bvlc_alexnet_layers(weights))
    model = AlexNet(weights=str(caffemodel), input_shape=(67, 67, 3),
                    include_preprocessing=True)
    with pytest.raises(ValueError, match="would do it twice"):
        export_saved_model(model, tmp_path / "twice", preset=EvalPreset(crop_size=67))
    path = export_saved_model(model, tmp_path / "alexnet" / "1")
    names = (tmp_path / "alexnet" / "1" / "assets" / "class_names.txt").read_text()
    assert names.splitlines() == imagenet_class_names()

    served = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(images))
    expected = caffe_forward(weights, crops)["probabilities"]
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=1e-4)
    best = np.argsort(-expected, axis=1)[:, :5]
    assert [[label.decode() for label in row] for row in served["top_k_labels"].numpy()] == [
        [imagenet_class_names()[index] for index in row] for row in best]
