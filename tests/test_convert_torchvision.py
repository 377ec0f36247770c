"""torchvision's alexnet-owt-7be5be79.pth: files saved here from the real torchvision model."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import torch

from keras_alexnet import AlexNet
from keras_alexnet.convert import load_torch_state_dict
from tests.real_torchvision import import_torchvision

torchvision = import_torchvision()


@pytest.fixture(scope="module")
def network():
    """torchvision.models.alexnet() with seeded He-scaled weights: torchvision's
    own initialisation gives logits near 0, where a mapping error hides."""
    torch.manual_seed(0)
    model = torchvision.models.alexnet()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                module.bias.normal_(0.0, 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def pth_file(network, tmp_path_factory):
    path = tmp_path_factory.mktemp("torchvision") / "alexnet-owt-7be5be79.pth"
    torch.save(network.state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3)).astype("float32")


def _torchvision_logits(network, images_nhwc):
    with torch.no_grad():
        return network(torch.from_numpy(images_nhwc).permute(0, 3, 1, 2)).numpy()


def _predict(model, images):
    return keras.ops.convert_to_numpy(model(images, training=False))


def test_logits_match_torchvision(network, pth_file, pixels):
    model = AlexNet(weights=pth_file, classifier_activation=None)
    assert model.input_shape == (None, 224, 224, 3)
    assert model.count_params() == sum(p.numel() for p in network.parameters())
    inputs = pixels / 255.0 - 0.5
    expected = _torchvision_logits(network, inputs)
    assert expected.std() > 1  # logits far from 0: the comparison can fail
    np.testing.assert_allclose(_predict(model, inputs), expected, atol=1e-4, rtol=1e-5)


def test_fc6_row_order_is_checked(network, pixels):
    """Feeding fc6 rows in the wrong flatten order moves the logits far beyond 1e-4."""
    state = network.state_dict()
    kernel = state["classifier.1.weight"]
    state["classifier.1.weight"] = kernel.reshape(4096, 256, 6, 6).permute(0, 2, 3, 1).reshape(
        4096, -1)
    model = AlexNet(variant="one_weird_trick", classifier_activation=None)
    load_torch_state_dict(model, state)
    inputs = pixels / 255.0 - 0.5
    assert np.abs(_predict(model, inputs) - _torchvision_logits(network, inputs)).max() > 1e-2


def test_include_preprocessing_matches_torchvision_normalisation(network, pth_file, pixels):
    """Raw [0, 255] pixels in; torchvision's own transforms and the constants its
    weights document (AlexNet_Weights.IMAGENET1K_V1.transforms()) as reference."""
    from torchvision.transforms.v2 import functional as F

    preset = torchvision.models.AlexNet_Weights.IMAGENET1K_V1.transforms()
    images = torch.from_numpy(pixels.astype("uint8")).permute(0, 3, 1, 2)
    normalized = F.normalize(F.to_dtype(images, torch.float32, scale=True),
                             mean=preset.mean, std=preset.std)
    with torch.no_grad():
        expected = network(normalized).numpy()
    model = AlexNet(weights=pth_file, include_preprocessing=True, classifier_activation=None)
    np.testing.assert_allclose(_predict(model, pixels), expected, atol=1e-4, rtol=1e-5)


def test_feature_extractor_keeps_the_convolutions(network, pth_file, pixels):
    model = AlexNet(weights=pth_file, include_top=False, pooling="avg")
    inputs = pixels / 255.0 - 0.5
    with torch.no_grad():
        features = network.features(torch.from_numpy(inputs).permute(0, 3, 1, 2))
    expected = features.mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(_predict(model, inputs), expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())


def test_wrong_shape_names_file_layer_and_shapes_and_never_half_loads(network, tmp_path):
    state = network.state_dict()
    state["classifier.4.weight"] = torch.zeros(4096, 4095)
    path = tmp_path / "wrong.pth"
    torch.save(state, path)
    message = (r"wrong\.pth: the kernel \(out, in\) of layer 'fc7' has shape \(4096, 4095\), "
               r"the model's needs \(4096, 4096\)")
    with pytest.raises(ValueError, match=message):
        AlexNet(weights=str(path))
    model = AlexNet(variant="one_weird_trick")
    before = [keras.ops.convert_to_numpy(weight) for weight in model.weights]
    with pytest.raises(ValueError, match="layer 'fc7' has shape"):
        load_torch_state_dict(model, state)
    for old, weight in zip(before, model.weights):  # conv1-fc6 come first: none assigned
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(weight), old)


def test_unreadable_files_are_clear_errors(network, tmp_path):
    missing = network.state_dict()
    del missing["features.8.bias"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"missing\.pth has no \['features\.8\.bias'\] for "
                                         r"layer 'conv4'"):
        AlexNet(weights=str(tmp_path / "missing.pth"))
    torch.save(network, tmp_path / "module.pt")  # a pickled module, not a state dict
    with pytest.raises(ValueError, match=r"module\.pt is not a readable PyTorch state dict"):
        AlexNet(weights=str(tmp_path / "module.pt"))
    (tmp_path / "corrupt.pth").write_bytes(b"not a zip archive" * 10)
    with pytest.raises(ValueError, match=r"corrupt\.pth is not a readable PyTorch state dict"):
        AlexNet(weights=str(tmp_path / "corrupt.pth"))
    with pytest.raises(ValueError, match=r"Received: weights='alexnet\.npz'"):
        AlexNet(weights="alexnet.npz")


def test_without_torch_the_error_says_how_to_install_it(pth_file):
    backend = keras.backend.backend()
    if backend == "torch":
        pytest.skip("the torch backend cannot run without torch")
    script = ("import sys; sys.modules['torch'] = None\n"  # as if torch were not installed
              "import keras_alexnet\n"
              f"keras_alexnet.AlexNet(weights={pth_file!r})\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, "KERAS_BACKEND": backend})
    assert result.returncode != 0
    assert "ImportError: Reading" in result.stderr
    assert "needs PyTorch, which is not installed" in result.stderr
    assert "python -m keras_alexnet.convert" in result.stderr


def test_converted_file_loads_without_torch(pth_file, network, pixels, tmp_path):
    from keras_alexnet.convert import convert_weights

    backend = keras.backend.backend()
    if backend == "torch":
        pytest.skip("the torch backend cannot run without torch")
    destination = tmp_path / "alexnet.weights.h5"
    convert_weights(pth_file, destination)
    np.save(tmp_path / "pixels.npy", pixels)
    script = ("import sys; sys.modules['torch'] = None\n"
              "import keras, numpy as np, keras_alexnet\n"
              f"model = keras_alexnet.AlexNet(weights={str(destination)!r}, "
              "include_preprocessing=True, classifier_activation=None)\n"
              f"pixels = np.load({str(tmp_path / 'pixels.npy')!r})\n"
              f"np.save({str(tmp_path / 'logits.npy')!r}, "
              "keras.ops.convert_to_numpy(model(pixels)))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, "KERAS_BACKEND": backend})
    assert result.returncode == 0, result.stderr[-3000:]
    mean = np.array([0.485, 0.456, 0.406])
    std = np.array([0.229, 0.224, 0.225])
    expected = _torchvision_logits(network, ((pixels / 255 - mean) / std).astype("float32"))
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), expected, atol=1e-4, rtol=1e-5)


def test_convert_command_checks_the_destination_before_reading_the_source(pth_file, tmp_path):
    """A destination in a missing folder, under a file or that is a folder: exit 2 and
    a message naming it, before the 233 MB source is read or a model built."""
    (tmp_path / "a_file").write_text("")
    (tmp_path / "a_folder.weights.h5").mkdir()
    command = [sys.executable, "-m", "keras_alexnet.convert", pth_file,
               str(tmp_path / "missing_dir" / "x.weights.h5")]
    result = subprocess.run(command, capture_output=True, text=True,
                            env={**os.environ, "KERAS_BACKEND": keras.backend.backend()})
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "missing_dir" in result.stderr and "does not exist" in result.stderr

    import keras_alexnet.convert
    from keras_alexnet.convert.__main__ import main as convert_main

    def unexpected_read(path):
        raise AssertionError(f"the source was read: {path}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(keras_alexnet.convert, "read_weights", unexpected_read)
        for destination, message in [("missing_dir/x.weights.h5", "does not exist"),
                                     ("a_file/x.weights.h5", "is not a folder"),
                                     ("a_folder.weights.h5", "is a folder")]:
            with pytest.raises(ValueError, match=message):
                keras_alexnet.convert.convert_weights(pth_file, tmp_path / destination)
            assert convert_main([pth_file, str(tmp_path / destination)]) == 2
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a_file",
                                                                "a_folder.weights.h5"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_files_load_as_float32_and_say_so(network, pixels, tmp_path, dtype):
    """`{k: v.half()}` or bfloat16 files: every value is exactly a float32, so the model
    must match torchvision running those same rounded weights in float32."""
    halved = {key: value.to(dtype) for key, value in network.state_dict().items()}
    path = tmp_path / "alexnet-half.pth"
    torch.save(halved, path)
    reference = torchvision.models.alexnet().eval()
    reference.load_state_dict({key: value.float() for key, value in halved.items()})
    with pytest.warns(UserWarning, match=rf"{str(dtype)[6:]} tensors.*converted to float32"):
        model = AlexNet(weights=str(path), classifier_activation=None)
    inputs = pixels / 255.0 - 0.5
    expected = _torchvision_logits(reference, inputs)
    assert np.abs(expected - _torchvision_logits(network, inputs)).max() > 1e-3  # rounded
    np.testing.assert_allclose(_predict(model, inputs), expected, atol=1e-4, rtol=1e-5)
