import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_alexnet.evaluation import evaluate, top_k_error


def test_top_k_error_by_hand():
    probabilities = np.array([[0.1, 0.6, 0.3],   # label 1: top-1 right
                              [0.5, 0.2, 0.3],   # label 2: 2nd -> top-1 wrong, top-2 right
                              [0.7, 0.2, 0.1]])  # label 2: 3rd -> wrong in both
    labels = [1, 2, 2]
    assert top_k_error(probabilities, labels, 1) == pytest.approx(2 / 3)
    assert top_k_error(probabilities, labels, 2) == pytest.approx(1 / 3)
    assert top_k_error(probabilities, labels, 5) == 0.0  # k above classes: everything
    with pytest.raises(ValueError, match="shapes"):
        top_k_error(probabilities, [1, 2], 1)


def test_ten_crop_evaluation_averages_softmax_over_crops():
    rng = np.random.default_rng(0)
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(6, activation="softmax")])
    crops = rng.normal(size=(5, 10, 4, 4, 3)).astype("float32") * 5
    labels = rng.integers(0, 6, 5)
    dataset = tf.data.Dataset.from_tensor_slices((crops, labels)).batch(2)
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in model.weights)
    logits = crops.mean(axis=(2, 3)) @ kernel + bias             # (5, 10, 6)
    softmax = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    expected_probabilities = softmax.mean(axis=1)
    result = evaluate(model, dataset)
    assert result["examples"] == 5
    assert result["top1_error"] == pytest.approx(
        np.mean(expected_probabilities.argmax(1) != labels))
    assert result["top5_error"] == pytest.approx(top_k_error(expected_probabilities, labels, 5))


def test_a_self_normalising_model_refuses_normalised_images():
    """`include_preprocessing=True` models take pixels; normalising twice is an error."""
    from keras_alexnet import AlexNet
    from keras_alexnet.presets import EvalPreset

    model = AlexNet(input_shape=(67, 67, 3), classes=3, include_preprocessing=True)
    images = np.random.default_rng(0).integers(0, 256, (4, 80, 90, 3), dtype=np.uint8)
    examples = tf.data.Dataset.from_tensor_slices((images, np.arange(4) % 3))
    twice = EvalPreset(crop_size=67).dataset(examples, batch_size=2)
    with pytest.raises(ValueError, match="normalised already"):
        evaluate(model, twice)
    assert evaluate(model, EvalPreset.for_model(model).dataset(examples, 2))["examples"] == 4
    # Wrapped, it still refuses them, and scores pixel values as the bare model does.
    wrapped = keras.Sequential([keras.Input((67, 67, 3)), model])
    with pytest.raises(ValueError, match="normalised already"):
        evaluate(wrapped, twice)
    pixels = EvalPreset.for_model(wrapped).dataset(examples, 2)
    assert evaluate(wrapped, pixels) == evaluate(model, pixels)


@pytest.mark.backend_independent
def test_a_folder_where_nothing_decodes_is_a_clear_error(tmp_path):
    from keras_alexnet import data
    from keras_alexnet.evaluation import predict_probabilities
    from keras_alexnet.presets import EvalPreset

    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "0.jpg").write_bytes(b"not an image")
    source = data.image_folder(tmp_path, validation_fraction=0)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(2, activation="softmax")])
    dataset = EvalPreset(crop_size=8, resize_size=8).dataset(source.examples("train"), 2)
    for function in (evaluate, predict_probabilities):
        with pytest.raises(data.NoUsableImagesError,
                           match=rf"No file of this split \(2 files, e\.g\. {tmp_path}"):
            function(model, dataset)
