"""Caffe's bvlc_alexnet: .caffemodel files written here, compared with Caffe's semantics.

The reference (tests/caffe_reference.py) is a Caffe-semantics forward pass in
torch.nn.functional on the weights as written to the file; keras_alexnet
only reads the file.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_alexnet import AlexNet, preprocess_input
from keras_alexnet.convert import read_weights
from tests.caffe_reference import (
    bvlc_alexnet_layers,
    caffe_forward,
    peaked,
    random_weights,
    write_caffemodel,
)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).integers(0, 256, (2, 227, 227, 3)).astype("float32")


@pytest.fixture(scope="module")
def full_weights(images):
    """Random weights of the full bvlc_alexnet (227x227 input, 1000 classes)."""
    return peaked(random_weights(0), images)


@pytest.fixture(scope="module")
def v1_file(full_weights, tmp_path_factory):
    path = tmp_path_factory.mktemp("caffe") / "bvlc_alexnet.caffemodel"
    write_caffemodel(path, bvlc_alexnet_layers(full_weights), version="v1")
    return str(path)


@pytest.fixture(scope="module")
def v1_model(v1_file):
    return AlexNet(weights=v1_file, include_preprocessing=True)


def _small_weights(seed=2):
    """bvlc_alexnet's convolutions with small fully connected layers: for
    errors that do not need a full network."""
    weights = random_weights(seed, classes=10, pool5_size=1)
    rng = np.random.default_rng(seed)
    for name, shape in {"fc6": (16, 256), "fc7": (16, 16), "fc8": (10, 16)}.items():
        weights[name] = (rng.normal(size=shape).astype("float32"),
                         np.zeros(shape[0], "float32"))
    return weights


def _predict(model, images):
    return keras.ops.convert_to_numpy(model(images, training=False))


def test_published_v1_layout_matches_caffe(v1_model, full_weights, images):
    """The published layout (V1 layers, legacy 4-D dims), full size, RGB pixels in."""
    expected = caffe_forward(full_weights, images)["probabilities"]
    assert expected.max(axis=1).min() > 0.05  # 50x uniform: the comparison can fail
    np.testing.assert_allclose(_predict(v1_model, images), expected, atol=1e-4)
    assert v1_model.input_shape == (None, 227, 227, 3)
    assert v1_model.output_shape == (None, 1000)
    for name in ("lrn1", "lrn2"):
        config = v1_model.get_layer(name).get_config()
        assert (config["size"], config["alpha"], config["beta"], config["k"]) == (
            5, 2e-5, 0.75, 1.0)


def test_v2_layout_matches_caffe(full_weights, images, tmp_path):
    """The newer layout (V2 `layer`, BlobShape), full size."""
    path = tmp_path / "bvlc_alexnet_v2.caffemodel"
    write_caffemodel(path, bvlc_alexnet_layers(full_weights), version="v2")
    model = AlexNet(weights=str(path), include_preprocessing=True)
    expected = caffe_forward(full_weights, images)["probabilities"]
    np.testing.assert_allclose(_predict(model, images), expected, atol=1e-4)


@pytest.mark.parametrize("mistake", ["bgr_input", "fc6_flattened_hwc", "paper_lrn"])
def test_the_comparison_catches_mapping_mistakes(v1_model, full_weights, images, mistake):
    """Each mistake a converter could make moves the probabilities far beyond 1e-4."""
    weights, lrn, inputs = dict(full_weights), None, images
    if mistake == "bgr_input":
        inputs = images[..., ::-1]
    elif mistake == "fc6_flattened_hwc":
        kernel, bias = full_weights["fc6"]
        hwc = kernel.reshape(4096, 256, 6, 6).transpose(0, 2, 3, 1).reshape(4096, -1)
        weights["fc6"] = (hwc, bias)
    else:  # the paper's constants in Caffe's convention: alpha 5e-4 / 5, k 2
        lrn = dict(local_size=5, alpha=5e-4, beta=0.75, k=2.0)
    wrong = caffe_forward(weights, inputs, **({"lrn": lrn} if lrn else {}))["probabilities"]
    assert np.abs(_predict(v1_model, images) - wrong).max() > 1e-2


@pytest.mark.parametrize("pooling", [None, "avg"])
def test_feature_extractor_keeps_the_convolutions(v1_file, full_weights, images, pooling):
    model = AlexNet(weights=v1_file, include_top=False, pooling=pooling,
                    include_preprocessing=True)
    pool5 = caffe_forward(full_weights, images)["pool5"]
    expected = pool5 if pooling is None else pool5.mean(axis=(1, 2))
    np.testing.assert_allclose(_predict(model, images), expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())


@pytest.mark.backend_independent
def test_both_layouts_and_double_data_read_the_same(tmp_path):
    weights = _small_weights()
    read = []
    for version, double in [("v1", False), ("v2", False), ("v2", True)]:
        path = tmp_path / f"{version}{'_double' if double else ''}.caffemodel"
        write_caffemodel(path, bvlc_alexnet_layers(weights), version=version, double=double)
        read.append(read_weights(str(path)))
    for pretrained in read:
        for name, (kernel, bias) in weights.items():
            if name == "conv1":
                kernel = kernel[:, ::-1]  # read as RGB
            np.testing.assert_array_equal(pretrained.layers[name][0], kernel, err_msg=name)
            np.testing.assert_array_equal(pretrained.layers[name][1], bias, err_msg=name)


def test_double_data_matches_caffe(tmp_path):
    images = np.random.default_rng(4).integers(0, 256, (2, 67, 67, 3)).astype("float32")
    weights = peaked(random_weights(3, classes=10, pool5_size=1), images)  # 67x67 input
    path = tmp_path / "double.caffemodel"
    write_caffemodel(path, bvlc_alexnet_layers(weights), version="v2", double=True)
    model = AlexNet(weights=str(path), input_shape=(67, 67, 3), include_preprocessing=True)
    np.testing.assert_allclose(_predict(model, images),
                               caffe_forward(weights, images)["probabilities"], atol=1e-4)


def test_lrn_constants_come_from_the_file(tmp_path):
    path = tmp_path / "paper_lrn.caffemodel"
    lrn = dict(local_size=5, alpha=5e-4, beta=0.75, k=2.0)  # the paper's, in Caffe's terms
    write_caffemodel(path, bvlc_alexnet_layers(_small_weights(), lrn=lrn))
    assert read_weights(str(path)).lrn_constants == {"size": 5, "alpha": 1e-4, "beta": 0.75,
                                                     "k": 2.0}


def _write_edited(tmp_path, edit, name="other.caffemodel", weights=None):
    layers = bvlc_alexnet_layers(weights or _small_weights())
    edit(layers)
    path = tmp_path / name
    write_caffemodel(path, layers)
    return str(path)


def _layer(layers, name):
    return next(layer for layer in layers if layer["name"] == name)


@pytest.mark.backend_independent
def test_another_network_is_a_clear_error(tmp_path):
    missing = _write_edited(tmp_path, lambda layers: layers.remove(_layer(layers, "conv5")),
                            "no_conv5.caffemodel")
    with pytest.raises(ValueError, match=r"no_conv5\.caffemodel is not bvlc_alexnet: it has "
                                         r"no layer 'conv5'"):
        AlexNet(weights=missing)

    def three_groups(layers):
        _layer(layers, "conv2")["convolution"]["group"] = 3

    with pytest.raises(ValueError, match=r"three_groups\.caffemodel: layer 'conv2' must have "
                                         r"group 2.*Received: group 3"):
        AlexNet(weights=_write_edited(tmp_path, three_groups, "three_groups.caffemodel"))

    def caffenet_order(layers):
        norm1 = _layer(layers, "norm1")
        layers.remove(norm1)
        layers.insert(layers.index(_layer(layers, "pool1")) + 1, norm1)

    with pytest.raises(ValueError, match="pool1 comes before norm1, as in CaffeNet"):
        AlexNet(weights=_write_edited(tmp_path, caffenet_order, "caffenet.caffemodel"))


def test_wrong_shapes_name_the_layer_and_never_half_load(tmp_path):
    weights = _small_weights()
    weights["conv2"] = (np.ones((256, 32, 5, 5), "float32"), weights["conv2"][1])  # 3 groups
    path = _write_edited(tmp_path, lambda layers: None, "three_groups.caffemodel", weights)
    model = AlexNet(include_top=False, input_shape=(67, 67, 3))
    before = [keras.ops.convert_to_numpy(weight) for weight in model.weights]
    message = (r"three_groups\.caffemodel: the kernel \(out, in / groups, kh, kw\) of layer "
               r"'conv2' has shape \(256, 32, 5, 5\), the model's needs \(256, 48, 5, 5\)\. "
               r"The weights split 96 input channels into 3 groups, the model into 2\.")
    with pytest.raises(ValueError, match=message):
        read_weights(path).load_into(model)
    for old, weight in zip(before, model.weights):  # conv1 comes first and was not assigned
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(weight), old)
    with pytest.raises(ValueError, match="fc6 reads pool5 flattened: the weights expect "
                                         "6x6x256, this model's pool5 is 1x1x256"):
        read_weights(_write_edited(tmp_path, lambda layers: None, "full_fc6.caffemodel",
                                   {**_small_weights(), "fc6": (np.zeros((16, 9216), "float32"),
                                                                np.zeros(16, "float32"))})
                     ).load_into(AlexNet(input_shape=(67, 67, 3), classes=10, variant="original",
                                         lrn_constants="caffe"))


@pytest.mark.backend_independent
def test_truncated_or_corrupt_files_are_clear_errors(tmp_path):
    whole = _write_edited(tmp_path, lambda layers: None, "whole.caffemodel")
    content = open(whole, "rb").read()
    truncated = tmp_path / "truncated.caffemodel"
    truncated.write_bytes(content[: len(content) * 2 // 3])
    with pytest.raises(ValueError, match=r"truncated\.caffemodel is not a readable Caffe "
                                         r"model: it is truncated or corrupt"):
        AlexNet(weights=str(truncated))
    corrupt = tmp_path / "corrupt.caffemodel"
    corrupt.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(ValueError, match=r"corrupt\.caffemodel is not a (readable )?Caffe model"):
        AlexNet(weights=str(corrupt))
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.caffemodel is not a Caffe model: it holds "
                                         "no layers"):
        AlexNet(weights=str(empty))


def test_arguments_that_contradict_the_file(tmp_path):
    path = _write_edited(tmp_path, lambda layers: None, "small.caffemodel")
    with pytest.raises(ValueError, match=r"small\.caffemodel holds Caffe weights of "
                                         r"variant='original'\. Received: "
                                         r"variant='one_weird_trick'"):
        AlexNet(weights=path, variant="one_weird_trick")
    with pytest.raises(ValueError, match=r"10 classes.*Received: classes=1000"):
        AlexNet(weights=path, classes=1000)
    with pytest.raises(ValueError, match=r"LRN constants .*Received: lrn_constants='paper'"):
        AlexNet(weights=path, lrn_constants="paper")
    # Agreeing arguments are fine, and include_top=False ignores the class count.
    model = AlexNet(weights=path, variant="original", lrn_constants="caffe", include_top=False,
                    classes=1000, input_shape=(67, 67, 3))
    assert model.output_shape == (None, 1, 1, 256)


def test_convert_command_writes_a_weights_file_that_loads_without_being_told(
        v1_file, full_weights, images, tmp_path):
    destination = tmp_path / "bvlc_alexnet.weights.h5"
    command = [sys.executable, "-m", "keras_alexnet.convert", v1_file, str(destination)]
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend()}
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "variant='original', 1000 classes" in result.stdout
    model = AlexNet(weights=str(destination), include_preprocessing=True)
    np.testing.assert_allclose(_predict(model, images),
                               caffe_forward(full_weights, images)["probabilities"], atol=1e-4)
    assert model.get_layer("lrn2").k == 1.0
    # The file records Caffe's statistics for a model that does not normalise itself too.
    plain = AlexNet(weights=str(destination))
    np.testing.assert_allclose(_predict(plain, preprocess_input(images, weights=plain)),
                               caffe_forward(full_weights, images)["probabilities"], atol=1e-4)
    # An existing destination is kept.
    modified = destination.stat().st_mtime_ns
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "already exists" in result.stderr
    assert destination.stat().st_mtime_ns == modified
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bvlc_alexnet.weights.h5"]


def test_paths_under_the_home_folder_are_expanded(v1_file, full_weights, images, tmp_path,
                                                  monkeypatch):
    """`~` in the convert command's source and destination, in `read_weights` and in
    `AlexNet(weights=...)` is the home folder."""
    from keras_alexnet.convert.__main__ import main as convert_main

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")  # which the command would set for good
    (tmp_path / "bvlc_alexnet.caffemodel").symlink_to(v1_file)
    assert convert_main(["~/bvlc_alexnet.caffemodel", "~/bvlc_alexnet.weights.h5"]) == 0
    assert (tmp_path / "bvlc_alexnet.weights.h5").is_file()
    assert read_weights("~/bvlc_alexnet.weights.h5").variant == "original"
    model = AlexNet(weights="~/bvlc_alexnet.weights.h5", include_preprocessing=True)
    np.testing.assert_allclose(_predict(model, images),
                               caffe_forward(full_weights, images)["probabilities"], atol=1e-4)


def test_loading_holds_the_file_and_one_converted_layer_at_most(tmp_path):
    """The 233 MB file is read once; its values are views of the file's bytes, and each
    layer is converted only when it is assigned. The peak is then the file, fc6
    reordered (0.62 of the file) and the copy the backend makes of it in
    `Variable.assign` (TensorFlow's `convert_to_tensor` copies every NumPy array):
    2.24 times the file on TensorFlow, not 2.62 with every layer converted at once and
    fc6 copied twice (issue 23)."""
    import gc
    import tracemalloc

    path = tmp_path / "bvlc_alexnet.caffemodel"
    weights = random_weights(5)
    write_caffemodel(path, bvlc_alexnet_layers(weights), version="v1")
    fc6_kernel = weights["fc6"][0]
    del weights
    gc.collect()
    size = path.stat().st_size
    tracemalloc.start()
    try:
        model = AlexNet(weights=str(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    fc6_bytes = fc6_kernel.nbytes
    assert fc6_bytes / size > 0.6  # a full-size file: fc6 is most of it
    assert peak < size + 2 * fc6_bytes + 0.05 * size, (peak / size, fc6_bytes / size)
    # fc6's rows reordered from Caffe's (C, H, W) flatten to Keras' (H, W, C).
    expected = fc6_kernel.reshape(4096, 256, 6, 6).transpose(2, 3, 1, 0).reshape(-1, 4096)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("fc6").kernel),
                                  expected)
