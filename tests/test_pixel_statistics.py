"""Every entry point feeds a model the input statistics of its weights.

Caffe's bvlc_alexnet takes pixels minus Caffe's mean, unscaled; a model built
from it without `include_preprocessing` must still get exactly that from the
presets, the export, `predict`, the evaluation and `preprocess_input`.
Checked against Caffe's semantics (tests/caffe_reference.py) on a small
67x67-input network in the real file format.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import keras_alexnet
from keras_alexnet import AlexNet, export_saved_model, predict
from keras_alexnet.convert.caffe import PIXEL_MEAN
from keras_alexnet.evaluation import predict_probabilities
from keras_alexnet.imagenet import IMAGENET_MEAN, IMAGENET_STD
from keras_alexnet.models import AlexNetModel, pixel_statistics, preprocess_input
from keras_alexnet.presets import EvalPreset, TrainPreset
from tests.caffe_reference import (
    bvlc_alexnet_layers,
    caffe_forward,
    peaked,
    random_weights,
    write_caffemodel,
)

SIZE = 67
PREPROCESSING = [False, True]


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(3).integers(0, 256, (3, 90, 120, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def caffe(images, tmp_path_factory):
    """A small bvlc_alexnet file, its weights, and Caffe's probabilities for `images`."""
    crops = EvalPreset(crop_size=SIZE, normalize=False).preprocess(tf.constant(images)).numpy()
    weights = peaked(random_weights(4, pool5_size=1), crops)
    path = tmp_path_factory.mktemp("caffe") / "small.caffemodel"
    write_caffemodel(path, bvlc_alexnet_layers(weights))
    return str(path), caffe_forward(weights, crops)["probabilities"]


def assert_statistics(model, expected):
    np.testing.assert_allclose(np.array(pixel_statistics(model)), np.array(expected), rtol=1e-6)


def caffe_model(caffe, include_preprocessing):
    return AlexNet(weights=caffe[0], input_shape=(SIZE, SIZE, 3),
                   include_preprocessing=include_preprocessing)


@pytest.mark.parametrize("include_preprocessing", PREPROCESSING)
def test_eval_preset_and_evaluation_follow_the_weights(caffe, images, include_preprocessing):
    model = caffe_model(caffe, include_preprocessing)
    dataset = tf.data.Dataset.from_tensor_slices((images, np.arange(3)))
    batches = EvalPreset.for_model(model).dataset(dataset, batch_size=2)
    probabilities, labels = predict_probabilities(model, batches)
    np.testing.assert_allclose(probabilities, caffe[1], atol=1e-4)
    np.testing.assert_array_equal(labels, np.arange(3))


@pytest.mark.parametrize("include_preprocessing", PREPROCESSING)
def test_export_serves_the_caffe_probabilities(caffe, images, include_preprocessing, tmp_path):
    model = caffe_model(caffe, include_preprocessing)
    path = export_saved_model(model, tmp_path / "alexnet" / "1")
    served = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_allclose(served["probabilities"].numpy(), caffe[1], atol=1e-4)


@pytest.mark.parametrize("include_preprocessing", PREPROCESSING)
def test_predict_of_a_saved_model_prints_the_caffe_top_5(caffe, images, include_preprocessing,
                                                        tmp_path, capsys):
    model_file = tmp_path / "model.keras"
    caffe_model(caffe, include_preprocessing).save(model_file)
    photo = tmp_path / "photo.png"
    Image.fromarray(images[0]).save(photo)
    assert predict.main(["--weights", str(model_file), str(photo)]) == 0
    printed = [line.split(maxsplit=2) for line in capsys.readouterr().out.splitlines()[1:6]]
    best = np.argsort(-caffe[1][0])[:5]
    assert [float(value.rstrip("%")) for _, value, _ in printed] == pytest.approx(
        100 * caffe[1][0][best], abs=0.006)


def test_preprocess_input_is_caffes_mean_subtraction_in_rgb(caffe, images):
    model = caffe_model(caffe, include_preprocessing=False)
    crops = EvalPreset(crop_size=SIZE, normalize=False).preprocess(tf.constant(images)).numpy()
    for weights in (model, caffe[0]):
        inputs = preprocess_input(crops, weights=weights)
        np.testing.assert_allclose(inputs, crops - np.array(PIXEL_MEAN, "float32"), atol=1e-4)
    probabilities = keras.ops.convert_to_numpy(model(preprocess_input(crops, weights=model)))
    np.testing.assert_allclose(probabilities, caffe[1], atol=1e-4)
    # The top-level name, with a backend tensor in and out.
    tensor = keras_alexnet.preprocess_input(keras.ops.convert_to_tensor(crops), weights=model)
    assert keras.ops.is_tensor(tensor)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(tensor), inputs, atol=1e-4)


def test_preprocess_input_defaults_to_imagenet_statistics():
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 5, 5, 3))
    expected = (pixels / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(preprocess_input(pixels), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(preprocess_input(pixels, weights=AlexNet(input_shape=(SIZE,) * 2 + (3,))),
                               expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="channels-last RGB"):
        preprocess_input(np.zeros((2, 3, 5, 5)))
    with pytest.raises(ValueError, match="Received: weights=3"):
        preprocess_input(pixels, weights=3)


def test_train_preset_normalises_with_the_weights_statistics(caffe):
    model = caffe_model(caffe, include_preprocessing=False)
    preset = TrainPreset.for_model(model, flip_probability=0.0, lighting_std=0.0)
    assert (preset.crop_size, preset.normalize) == (SIZE, True)
    square = np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    crop = preset.random_crop(tf.constant(square), tf.constant([1, 2])).numpy()
    # The preset's normalisation of that crop is Caffe's: pixels minus the mean.
    from keras_alexnet.presets import normalize

    normalised = normalize(tf.constant(crop), preset.mean, preset.std).numpy()
    np.testing.assert_allclose(normalised, crop * 255 - np.array(PIXEL_MEAN), atol=1e-3)
    assert not TrainPreset.for_model(caffe_model(caffe, include_preprocessing=True)).normalize


def test_the_statistics_travel_with_the_model(caffe, tmp_path):
    model = caffe_model(caffe, include_preprocessing=False)
    assert isinstance(model, AlexNetModel)
    caffe_statistics = (PIXEL_MEAN, (1.0, 1.0, 1.0))
    assert_statistics(model, caffe_statistics)
    model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras")
    assert_statistics(reloaded, caffe_statistics)
    # Wrapped in another model (a converted weights file: tests/test_convert_caffe.py).
    wrapped = keras.Sequential([keras.Input((SIZE, SIZE, 3)), reloaded])
    assert_statistics(wrapped, caffe_statistics)
    # A model with random weights expects what the presets give: ImageNet's.
    imagenet = (tuple(255 * v for v in IMAGENET_MEAN), tuple(255 * v for v in IMAGENET_STD))
    assert_statistics(AlexNet(input_shape=(SIZE, SIZE, 3)), imagenet)
    assert_statistics(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), imagenet)
    with pytest.raises(ValueError, match="pixel_std"):
        AlexNetModel(model.inputs, model.outputs, pixel_std=(1.0, 0.0, 1.0))


@pytest.mark.parametrize("include_preprocessing", PREPROCESSING)
def test_occluder_and_patch_fill_default_to_the_mean_pixel_of_the_models_input(
        caffe, images, include_preprocessing):
    from keras_alexnet.visualize import occlusion_sensitivity, top_activating_patches

    model = caffe_model(caffe, include_preprocessing)
    crops = EvalPreset.for_model(model).preprocess(tf.constant(images)).numpy()
    # Pixel values: the mean pixel is Caffe's mean; normalised images: 0.
    mean = np.array(PIXEL_MEAN if include_preprocessing else (0.0, 0.0, 0.0), "float32")
    default = occlusion_sensitivity(model, crops[0], size=20, stride=20)
    grey = occlusion_sensitivity(model, crops[0], size=20, stride=20, fill=mean)
    np.testing.assert_array_equal(default.class_probability, grey.class_probability)
    if include_preprocessing:  # where the old default, 0, was a black square
        black = occlusion_sensitivity(model, crops[0], size=20, stride=20, fill=0.0)
        assert not np.array_equal(black.class_probability, grey.class_probability)
    default = top_activating_patches(model, crops, "conv5", feature_map=0, count=2)
    grey = top_activating_patches(model, crops, "conv5", feature_map=0, count=2, fill=mean)
    np.testing.assert_array_equal(default.patches, grey.patches)
