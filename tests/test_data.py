import io

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from keras_alexnet import AlexNet, data
from keras_alexnet.presets import EvalPreset, TrainPreset


def _encode(array, mode, fmt):
    buffer = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture
def hostile_folder(tmp_path):
    """Three classes of valid images in every format, plus files that are not images."""
    root = tmp_path / "images"
    data.write_synthetic_image_folder(root, classes=3, images_per_class=4, image_size=(40, 52))
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (30, 34, 3), dtype=np.uint8)
    circle = root / "circle"
    for name, mode, fmt in [("gray.jpg", "L", "JPEG"), ("cmyk.jpg", "CMYK", "JPEG"),
                            ("rgba.png", "RGBA", "PNG"), ("palette.gif", "P", "GIF"),
                            ("plain.bmp", "RGB", "BMP")]:
        (circle / name).write_bytes(_encode(pixels, mode, fmt))
    good_jpeg = _encode(pixels, "RGB", "JPEG")
    bad = {"truncated.jpg": good_jpeg[: len(good_jpeg) // 3], "empty.jpg": b"",
           "notes.txt": b"not an image", "fake.png": b"\x89PNG\r\n\x1a\n garbage"}
    for name, content in bad.items():
        (root / "square" / name).write_bytes(content)
    (root / "zz_empty_class").mkdir()
    return root, sorted(bad)


def _collect(dataset):
    images, labels = [], []
    for image, label in dataset:
        images.append(image.numpy())
        labels.append(int(label))
    return images, labels


def test_image_folder_skips_and_names_bad_files(hostile_folder):
    root, bad_names = hostile_folder
    with pytest.warns(UserWarning) as record:
        source = data.image_folder(root, validation_fraction=0.25)
    messages = " ".join(str(warning.message) for warning in record)
    assert "Skipped 4 file(s)" in messages
    for name in bad_names:
        assert name in messages
    assert "zz_empty_class" in messages
    assert sorted(name.split("/")[-1] for name in source.skipped) == bad_names
    assert source.class_names == ["circle", "square", "triangle", "zz_empty_class"]
    # 4 + 5 extra good images in circle, 4 in square, 4 in triangle = 17 usable.
    assert source.counts["train"] + source.counts["validation"] == 17
    images, labels = _collect(source.train.concatenate(source.validation))
    assert len(images) == 17
    assert all(image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
               for image in images)
    assert sorted(set(labels)) == [0, 1, 2]


def test_held_out_split_is_deterministic_and_stratified(tmp_path):
    root = data.write_synthetic_image_folder(tmp_path / "d", classes=2, images_per_class=10,
                                             image_size=(32, 32))
    first = data.image_folder(root, validation_fraction=0.2, seed=3)
    second = data.image_folder(root, validation_fraction=0.2, seed=3)
    assert first.counts == {"train": 16, "validation": 4}
    first_images, first_labels = _collect(first.validation)
    second_images, second_labels = _collect(second.validation)
    assert first_labels == second_labels and sorted(first_labels) == [0, 0, 1, 1]
    for a, b in zip(first_images, second_images):
        np.testing.assert_array_equal(a, b)


def test_labels_stay_with_their_images(tmp_path):
    """Each class is a solid colour: a decoded image's colour must match its label."""
    colours = {"red": (250, 0, 0), "green": (0, 250, 0), "blue": (0, 0, 250)}
    for name, colour in colours.items():
        (tmp_path / name).mkdir()
        for index in range(5):
            pixels = np.broadcast_to(np.uint8(colour), (20, 24, 3))
            (tmp_path / name / f"{index}.png").write_bytes(_encode(np.ascontiguousarray(pixels), "RGB", "PNG"))
    source = data.image_folder(tmp_path, validation_fraction=0.0)
    preset = TrainPreset(crop_size=16, resize_size=20, lighting_std=0.0, mean=(0, 0, 0),
                         std=(1, 1, 1))
    for images, labels in preset.dataset(source.train, batch_size=4, seed=0):
        channel = np.argmax(images.numpy().mean(axis=(1, 2)), axis=1)
        expected = [list(colours).index(source.class_names[label]) for label in labels.numpy()]
        np.testing.assert_array_equal(channel, expected)


def test_train_and_val_subfolders(tmp_path):
    data.write_synthetic_image_folder(tmp_path / "train", classes=2, images_per_class=3,
                                      image_size=(24, 24))
    data.write_synthetic_image_folder(tmp_path / "val", classes=2, images_per_class=2,
                                      image_size=(24, 24), seed=1)
    source = data.image_folder(tmp_path)
    assert source.counts == {"train": 6, "validation": 4}
    assert source.class_names == ["circle", "square"]


def test_missing_and_unusable_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.image_folder(tmp_path / "nowhere")
    (tmp_path / "only_text" / "a").mkdir(parents=True)
    (tmp_path / "only_text" / "a" / "x.txt").write_text("hello")
    with pytest.raises(data.NoUsableImagesError, match="only_text"):
        data.image_folder(tmp_path / "only_text")
    with pytest.raises(data.NoUsableImagesError, match="class sub-folders"):
        data.image_folder(tmp_path / "only_text" / "a")
    with pytest.raises(ValueError, match="validation_fraction"):
        data.image_folder(tmp_path / "only_text", validation_fraction=1.5)


def test_tfds_mock_data_grayscale_feeds_model_fit():
    with tfds.testing.mock_data(num_examples=16):
        source = data.tfds_dataset("mnist")
    assert source.num_classes == 10
    assert set(source.counts) == {"train", "validation"}
    image, label = next(iter(source.train))
    assert image.shape[-1] == 3 and image.dtype == tf.uint8
    preset = TrainPreset(crop_size=67, resize_size=72)
    train = preset.dataset(source.train, batch_size=8, seed=0)
    validation = EvalPreset(crop_size=67, resize_size=72).dataset(source.validation, 8)
    model = AlexNet(input_shape=(67, 67, 3), classes=10, initialization="glorot")
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(train, validation_data=validation, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert "val_accuracy" in history.history


def test_tfds_imagenet_without_manual_files_says_what_is_needed(tmp_path):
    with pytest.raises(FileNotFoundError, match="ILSVRC2012_img_train.tar"):
        data.tfds_dataset("imagenet2012", data_dir=str(tmp_path), manual_dir=str(tmp_path))


def test_tfds_unknown_name():
    with pytest.raises(ValueError, match="no_such_dataset"):
        data.tfds_dataset("no_such_dataset")


def test_from_arguments_rejects_both():
    with pytest.raises(ValueError, match="not both"):
        data.from_arguments(data="x", dataset="mnist")
