import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import torch

import keras_alexnet
from keras_alexnet import AlexNet
from keras_alexnet.convert import load_torch_state_dict
from keras_alexnet.models.alexnet import minimum_input_size
from bench.torch_reference import torch_alexnet

# The paper's table (REFERENCE.md): output shape at 227x227 and parameters.
PAPER_TABLE = {
    "conv1": ((55, 55, 96), 34_944),
    "lrn1": ((55, 55, 96), 0),
    "pool1": ((27, 27, 96), 0),
    "conv2": ((27, 27, 256), 307_456),
    "pool2": ((13, 13, 256), 0),
    "conv3": ((13, 13, 384), 885_120),
    "conv4": ((13, 13, 384), 663_936),
    "conv5": ((13, 13, 256), 442_624),
    "pool5": ((6, 6, 256), 0),
    "flatten": ((9216,), 0),
    "fc6": ((4096,), 37_752_832),
    "fc7": ((4096,), 16_781_312),
    "fc8": ((1000,), 4_097_000),
}
LAYER_NAMES = ["conv1", "lrn1", "pool1", "conv2", "lrn2", "pool2", "conv3", "conv4",
               "conv5", "pool5", "flatten", "fc6", "drop6", "fc7", "drop7", "fc8"]

# Zeiler & Fergus 2013, figure 3 (224x224 input), parameters computed by hand:
# kh * kw * in * out + out for a convolution, in * out + out for a dense layer.
ZFNET_TABLE = {
    "conv1": ((110, 110, 96), 7 * 7 * 3 * 96 + 96),           # 14,208
    "pool1": ((55, 55, 96), 0),
    "lrn1": ((55, 55, 96), 0),
    "conv2": ((26, 26, 256), 5 * 5 * 96 * 256 + 256),         # 614,656
    "pool2": ((13, 13, 256), 0),
    "lrn2": ((13, 13, 256), 0),
    "conv3": ((13, 13, 384), 3 * 3 * 256 * 384 + 384),        # 885,120
    "conv4": ((13, 13, 384), 3 * 3 * 384 * 384 + 384),        # 1,327,488
    "conv5": ((13, 13, 256), 3 * 3 * 384 * 256 + 256),        # 884,992
    "pool5": ((6, 6, 256), 0),
    "fc6": ((4096,), 6 * 6 * 256 * 4096 + 4096),              # 37,752,832
    "fc7": ((4096,), 4096 * 4096 + 4096),                      # 16,781,312
    "fc8": ((1000,), 4096 * 1000 + 1000),                      # 4,097,000
}
ZFNET_PARAMETERS = 62_357_608  # the sum of the table


def test_original_matches_paper_table():
    model = AlexNet()
    assert model.count_params() == 60_965_224
    assert model.input_shape == (None, 227, 227, 3)
    for name, (shape, params) in PAPER_TABLE.items():
        layer = model.get_layer(name)
        assert tuple(layer.output.shape[1:]) == shape, name
        assert layer.count_params() == params, name
    assert [layer.name for layer in model.layers[1:]] == LAYER_NAMES
    # Blocks 1-2: conv -> ReLU -> LRN -> pool; grouped kernels see half the inputs.
    assert model.get_layer("conv1").activation is keras.activations.relu
    assert model.get_layer("fc8").activation is keras.activations.softmax
    for name, in_channels in [("conv2", 48), ("conv4", 192), ("conv5", 192), ("conv3", 256)]:
        assert model.get_layer(name).kernel.shape[2] == in_channels, name


def test_224_input_reaches_55x55_with_the_same_parameters():
    model = AlexNet(input_shape=(224, 224, 3))
    assert model.get_layer("conv1_pad").padding == ((1, 2), (1, 2))
    assert tuple(model.get_layer("conv1").output.shape[1:]) == (55, 55, 96)
    assert model.count_params() == 60_965_224


def test_zfnet_matches_the_paper_table():
    model = AlexNet(variant="zfnet")
    assert sum(params for _, params in ZFNET_TABLE.values()) == ZFNET_PARAMETERS
    assert model.count_params() == ZFNET_PARAMETERS
    assert model.input_shape == (None, 224, 224, 3)
    for name, (shape, params) in ZFNET_TABLE.items():
        layer = model.get_layer(name)
        assert tuple(layer.output.shape[1:]) == shape, name
        assert layer.count_params() == params, name
    # ReLU, pool, then contrast normalisation; no groups; one zero row and column
    # after the image where the paper's sizes need an overhanging window.
    assert [layer.name for layer in model.layers[1:12]] == [
        "conv1_pad", "conv1", "pool1_pad", "pool1", "lrn1", "conv2", "pool2_pad", "pool2",
        "lrn2", "conv3", "conv4"]
    for name in ("conv1_pad", "pool1_pad", "pool2_pad"):
        assert model.get_layer(name).padding == ((0, 1), (0, 1)), name
    assert model.get_layer("conv1").strides == model.get_layer("conv2").strides == (2, 2)
    assert all(model.get_layer(f"conv{index}").groups == 1 for index in range(1, 6))
    for name in ("lrn1", "lrn2"):  # AlexNet's constants, across feature maps
        layer = model.get_layer(name)
        assert (layer.size, layer.alpha, layer.beta, layer.k, layer.axis) == (5, 1e-4, 0.75,
                                                                             2.0, -1)


def test_zfnet_block_1_against_numpy():
    """conv1 -> ReLU -> 3x3/2 max pool -> LRN across maps, with cuda-convnet's
    windows computed in NumPy: the last window of conv1 and of pool1 overhangs the
    edge, the convolution reading zeros there and the pooling ignoring it."""
    keras.utils.set_random_seed(0)
    model = AlexNet(variant="zfnet", include_top=False, input_shape=(52, 52, 3),
                    initialization="he")
    x = np.random.default_rng(1).normal(size=(2, 52, 52, 3))
    kernel, bias = (keras.ops.convert_to_numpy(w).astype("float64")
                    for w in model.get_layer("conv1").weights)
    # conv1: 1 + ceil((52 - 7) / 2) = 24 windows, starting at 0, 2, ..., 46.
    padded = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    conv = np.zeros((2, 24, 24, 96))
    for i in range(7):
        for j in range(7):
            conv += padded[:, i:i + 47:2, j:j + 47:2] @ kernel[i, j]
    relu = np.maximum(conv + bias, 0)
    # pool1: 1 + ceil((24 - 3) / 2) = 12 windows; the last covers rows 22-23 only.
    outside = np.pad(relu, ((0, 0), (0, 1), (0, 1), (0, 0)), constant_values=-np.inf)
    pooled = np.stack([outside[:, i:i + 23:2, j:j + 23:2] for i in range(3) for j in range(3)]
                      ).max(axis=0)
    squares = np.pad(pooled**2, ((0, 0), (0, 0), (0, 0), (2, 2)))
    expected = pooled / (2 + 1e-4 * sum(squares[..., c:c + 96] for c in range(5))) ** 0.75
    lrn1 = keras.Model(model.input, model.get_layer("lrn1").output)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(lrn1(x.astype("float32"))),
                               expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_zfnet_of_unknown_size_matches_the_fixed_sizes():
    """With height and width None every stride-2 layer pads one zero after; that
    gives each size exactly what the fixed-size model pads only where needed."""
    keras.utils.set_random_seed(0)
    dynamic = AlexNet(variant="zfnet", include_top=False, input_shape=(None, None, 3),
                      initialization="he")
    for size in (52, 67, 101):
        fixed = AlexNet(variant="zfnet", include_top=False, input_shape=(size, size, 3))
        fixed.set_weights(dynamic.get_weights())
        x = np.random.default_rng(size).normal(size=(1, size, size, 3)).astype("float32")
        expected = keras.ops.convert_to_numpy(fixed(x))
        np.testing.assert_allclose(keras.ops.convert_to_numpy(dynamic(x)), expected,
                                   rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_one_weird_trick_matches_torchvision_layout():
    model = AlexNet(variant="one_weird_trick")
    assert model.count_params() == 61_100_840
    weighted = [layer.name for layer in model.layers if layer.weights]
    assert weighted == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    assert tuple(model.get_layer("pool5").output.shape[1:]) == (6, 6, 256)
    with pytest.raises(ValueError):
        model.get_layer("lrn1")


@pytest.mark.parametrize("variant,size", [("original", 227), ("one_weird_trick", 224),
                                          ("zfnet", 224)])
def test_logits_match_pytorch_reference(variant, size):
    """Same weights in an AlexNet written directly in PyTorch give the same logits."""
    torch.manual_seed(0)
    reference, names = torch_alexnet(variant, classes=10)
    with torch.no_grad():  # larger weights than N(0, 0.01) so every layer matters
        for parameter in reference.parameters():
            parameter.normal_(0.0, 0.02)
    model = AlexNet(variant=variant, input_shape=(size, size, 3), classes=10,
                    classifier_activation=None)
    load_torch_state_dict(model, reference.state_dict(), layer_names=names)
    x = np.random.default_rng(0).uniform(-2, 2, (2, size, size, 3)).astype("float32")
    with torch.no_grad():
        expected = reference(torch.tensor(x).permute(0, 3, 1, 2)).numpy()
    logits = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("pooling,shape", [(None, (None, 6, 6, 256)),
                                           ("avg", (None, 256)), ("max", (None, 256))])
def test_feature_extractor(pooling, shape):
    model = AlexNet(include_top=False, pooling=pooling)
    assert model.output_shape == shape
    assert model.count_params() == 60_965_224 - 37_752_832 - 16_781_312 - 4_097_000


def test_feature_extractor_accepts_any_size():
    model = AlexNet(include_top=False, input_shape=(None, None, 3), pooling="avg")
    for size in (227, 300):
        assert model(np.zeros((1, size, size, 3), "float32")).shape == (1, 256)


def test_other_input_sizes_follow_keras_applications():
    model = AlexNet(input_shape=(99, 131, 3), classes=7)
    # 99 -> pad to 103 -> 24 -> 11 -> 5 -> 2; 131 -> 31 -> 15 -> 7 -> 3
    assert tuple(model.get_layer("pool5").output.shape[1:]) == (2, 3, 256)
    assert model.get_layer("fc6").kernel.shape == (2 * 3 * 256, 4096)
    assert model.output_shape == (None, 7)


def test_input_tensor():
    inputs = keras.Input((227, 227, 3))
    model = AlexNet(input_tensor=inputs, classes=3)
    assert model.inputs[0] is inputs
    assert model.output_shape == (None, 3)


@pytest.mark.parametrize("initialization", ["paper", "caffe"])
def test_initialization(initialization):
    keras.utils.set_random_seed(0)
    model = AlexNet(initialization=initialization)
    one = 1.0 if initialization == "paper" else 0.1
    for name in ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]:
        kernel, bias = (keras.ops.convert_to_numpy(w) for w in model.get_layer(name).weights)
        std = 0.005 if initialization == "caffe" and name in ("fc6", "fc7") else 0.01
        assert abs(kernel.mean()) < 0.1 * std, name
        assert kernel.std() == pytest.approx(std, rel=0.05), name
        expected_bias = one if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
        np.testing.assert_array_equal(bias, np.full_like(bias, expected_bias), err_msg=name)


def test_zfnet_paper_initialization_has_zero_biases():
    """Zeiler & Fergus §3: weights 1e-2 (here N(0, 0.01)), all biases 0."""
    keras.utils.set_random_seed(0)
    model = AlexNet(variant="zfnet", input_shape=(67, 67, 3))
    for name in ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]:
        kernel, bias = (keras.ops.convert_to_numpy(w) for w in model.get_layer(name).weights)
        assert kernel.std() == pytest.approx(0.01, rel=0.05), name
        np.testing.assert_array_equal(bias, np.zeros_like(bias), err_msg=name)


def test_keras_saving_round_trip(tmp_path):
    model = AlexNet(input_shape=(99, 99, 3), classes=5)
    x = np.random.default_rng(0).uniform(0, 1, (2, 99, 99, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(model(x))
    path = str(tmp_path / "alexnet.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(restored(x)), expected, atol=1e-6)
    assert [type(layer) for layer in restored.layers] == [type(layer) for layer in model.layers]
    # Config round trip without weights gives the same architecture.
    clone = keras.Model.from_config(model.get_config())
    assert clone.count_params() == model.count_params()


def test_weights_argument_loads_a_weights_file(tmp_path):
    model = AlexNet(input_shape=(99, 99, 3), classes=5)
    path = str(tmp_path / "alexnet.weights.h5")
    model.save_weights(path)
    loaded = AlexNet(input_shape=(99, 99, 3), classes=5, weights=path)
    for saved, restored in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(saved),
                                      keras.ops.convert_to_numpy(restored))
    # Without `classes`, fc8's width is read from the file.
    loaded = AlexNet(input_shape=(99, 99, 3), weights=path)
    assert loaded.output_shape == (None, 5)
    for saved, restored in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(saved),
                                      keras.ops.convert_to_numpy(restored))


@pytest.mark.parametrize("kwargs,message", [
    ({"variant": "vgg"}, "variant='vgg'"),
    ({"weights": "imagenet"}, "weights='imagenet'"),
    ({"weights": "missing.weights.h5"}, "does not exist"),
    ({"classes": 0}, "classes=0"),
    ({"pooling": "sum", "include_top": False}, "pooling='sum'"),
    ({"pooling": "avg"}, "include_top=False"),
    ({"input_shape": (227, 227, 1)}, r"input_shape=\(227, 227, 1\)"),
    ({"input_shape": (227, 227)}, r"input_shape=\(227, 227\)"),
    ({"input_shape": (40, 227, 3)}, "at least"),
    ({"input_shape": (None, None, 3)}, "include_top=True"),
    ({"dropout": 1.0}, "dropout=1.0"),
    ({"initialization": "lecun"}, "initialization='lecun'"),
])
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AlexNet(**kwargs)


def test_minimum_input_size_is_the_smallest_that_builds():
    # By hand for zfnet: pool5 needs 2 rows after pool2, so 4 after conv2, 10 after
    # pool1, 20 after conv1 (1 + ceil((n - 7) / 2) >= 20): n >= 44.
    assert minimum_input_size("zfnet") == 44
    for variant in ("original", "one_weird_trick", "zfnet"):
        size = minimum_input_size(variant)
        model = AlexNet(variant=variant, include_top=False, input_shape=(size, size, 3))
        assert model.output_shape == (None, 1, 1, 256)
        with pytest.raises(ValueError, match="at least"):
            AlexNet(variant=variant, include_top=False, input_shape=(size - 1, size - 1, 3))


def test_import_adds_no_backend_framework():
    """keras_alexnet itself imports neither jax nor torch (keras may), and
    building the model imports TensorFlow only where Keras' backend is it."""
    script = (
        "import sys, keras; before = set(sys.modules); import keras_alexnet; "
        "keras_alexnet.AlexNet(input_shape=(67, 67, 3), classes=3); "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "assert not new & {'jax', 'torch'}, new; "
        "assert keras.backend.backend() == 'tensorflow' or 'tensorflow' not in new, new; "
        "assert callable(keras_alexnet.export_saved_model); "
        "print(keras.backend.backend())"
    )
    backend = keras.backend.backend()
    env = {**os.environ, "KERAS_BACKEND": backend}
    result = subprocess.run([sys.executable, "-c", script], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == backend


def test_version():
    assert keras_alexnet.__version__


def test_lrn_constants_and_preprocessing_travel_with_the_model(tmp_path):
    """Both are part of the architecture: they round-trip through `.keras`."""
    model = AlexNet(input_shape=(67, 67, 3), classes=3, lrn_constants="caffe",
                    include_preprocessing=True)
    assert [layer.name for layer in model.layers[:3]] == ["images", "preprocessing", "conv1"]
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 67, 67, 3)).astype("float32")
    plain = AlexNet(input_shape=(67, 67, 3), classes=3, lrn_constants={"alpha": 2e-5, "k": 1.0})
    plain.set_weights(model.get_weights())
    normalised = (pixels / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(pixels)),
                               keras.ops.convert_to_numpy(plain(normalised.astype("float32"))),
                               atol=1e-5)
    path = str(tmp_path / "caffe_lrn.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    for name in ("lrn1", "lrn2"):
        layer = restored.get_layer(name)
        assert (layer.size, layer.alpha, layer.beta, layer.k) == (5, 2e-5, 0.75, 1.0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(restored(pixels)),
                               keras.ops.convert_to_numpy(model(pixels)), atol=1e-6)


@pytest.mark.parametrize("kwargs,message", [
    ({"lrn_constants": "bvlc"}, "lrn_constants='bvlc'"),
    ({"lrn_constants": {"gamma": 1.0}}, "lrn_constants={'gamma': 1.0}"),
    ({"lrn_constants": {"alpha": -1.0}}, "alpha=-1.0"),
    ({"variant": "one_weird_trick", "lrn_constants": "paper"}, "has no local response"),
])
def test_invalid_lrn_constants(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AlexNet(input_shape=(67, 67, 3), **kwargs)
