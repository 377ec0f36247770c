import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_alexnet.augment import IMAGENET_EIGVAL, IMAGENET_EIGVEC
from keras_alexnet.presets import (EvalPreset, TrainPreset, center_crop,
                                   resize_short_side)

# tf.data pipelines: the same on every Keras backend.
pytestmark = pytest.mark.backend_independent

IDENTITY = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _examples(images, labels=None):
    labels = np.arange(len(images)) if labels is None else labels
    return tf.data.Dataset.from_tensor_slices((np.stack(images), np.asarray(labels)))


def _positional_image(size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _batches(dataset):
    return np.concatenate([images.numpy() for images, _ in dataset])


def test_resize_short_side_keeps_aspect_and_same_size_is_identity():
    image = tf.zeros((100, 50, 3), tf.uint8)
    assert resize_short_side(image, 256).shape == (512, 256, 3)
    source = _positional_image(32)
    np.testing.assert_allclose(resize_short_side(source, 32).numpy(), source, atol=1e-3)


def test_random_crop_is_a_window_of_its_source():
    source = _positional_image(40)
    preset = TrainPreset(crop_size=24, resize_size=40, flip_probability=0.0,
                         lighting_std=0.0, **IDENTITY)
    crops = _batches(preset.dataset(_examples([source] * 12), batch_size=4, seed=0)) * 255
    positions = set()
    for crop in crops:
        matches = [(top, left) for top in range(17) for left in range(17)
                   if np.allclose(source[top:top + 24, left:left + 24], crop, atol=1e-2)]
        assert len(matches) == 1
        positions.add(matches[0])
    assert len(positions) > 3  # crops move


def test_flips_happen_about_half_the_time():
    source = _positional_image(16)
    preset = TrainPreset(crop_size=16, resize_size=16, lighting_std=0.0, **IDENTITY)
    crops = _batches(preset.dataset(_examples([source] * 400), batch_size=50, seed=1)) * 255
    flipped = [np.allclose(crop, source[:, ::-1], atol=1e-2) for crop in crops]
    unflipped = [np.allclose(crop, source, atol=1e-2) for crop in crops]
    assert all(a != b for a, b in zip(flipped, unflipped))
    assert 160 <= sum(flipped) <= 240  # Binomial(400, 0.5): mean 200, sd 10


def test_pca_lighting_adds_a_constant_with_the_paper_statistics():
    source = _positional_image(4)
    preset = TrainPreset(crop_size=4, resize_size=4, flip_probability=0.0, **IDENTITY)
    outputs = _batches(preset.dataset(_examples([source] * 4000), batch_size=500, seed=2))
    offsets = outputs - source / 255.0
    np.testing.assert_allclose(offsets, offsets[:, :1, :1].repeat(4, 1).repeat(4, 2), atol=1e-5)
    projections = offsets[:, 0, 0, :] @ np.array(IMAGENET_EIGVEC)
    np.testing.assert_allclose(projections.std(axis=0), 0.1 * np.array(IMAGENET_EIGVAL),
                               rtol=0.08)


def test_normalisation_and_labels():
    source = _positional_image(8)
    preset = TrainPreset(crop_size=8, resize_size=8, flip_probability=0.0, lighting_std=0.0)
    images, labels = next(iter(preset.dataset(_examples([source] * 2, [5, 7]), batch_size=2,
                                              shuffle=False, deterministic=True)))
    expected = (source / 255.0 - np.array(preset.mean)) / np.array(preset.std)
    np.testing.assert_allclose(images.numpy()[0], expected, atol=1e-4)
    assert labels.numpy().tolist() == [5, 7]


def test_seeded_pipeline_repeats_and_epochs_differ():
    images = [_positional_image(20, seed) for seed in range(8)]
    preset = TrainPreset(crop_size=12, resize_size=20)

    def run():
        dataset = preset.dataset(_examples(images), batch_size=4, seed=5, deterministic=True)
        return _batches(dataset), _batches(dataset)

    (first_epoch, second_epoch), (again, _) = run(), run()
    np.testing.assert_array_equal(first_epoch, again)
    assert not np.allclose(first_epoch, second_epoch)


def test_eval_preset_centre_crop():
    source = _positional_image(30)
    preset = EvalPreset(crop_size=20, resize_size=30, **IDENTITY)
    images = _batches(preset.dataset(_examples([source]), batch_size=1))
    np.testing.assert_allclose(images[0] * 255, source[5:25, 5:25], atol=1e-2)
    # A non-square batch: short side to 30, then the central 20x20.
    wide = tf.zeros((2, 30, 60, 3), tf.uint8)
    assert preset.preprocess(wide).shape == (2, 20, 20, 3)


def test_ten_crop_geometry():
    source = _positional_image(30)
    preset = EvalPreset(crop_size=20, resize_size=30, ten_crop=True, **IDENTITY)
    crops = _batches(preset.dataset(_examples([source]), batch_size=1))[0] * 255
    assert crops.shape == (10, 20, 20, 3)
    windows = [source[:20, :20], source[:20, 10:], source[10:, :20], source[10:, 10:],
               source[5:25, 5:25]]
    for index, window in enumerate(windows):
        np.testing.assert_allclose(crops[index], window, atol=1e-2)
        np.testing.assert_allclose(crops[index + 5], window[:, ::-1], atol=1e-2)


def test_center_crop_helper():
    image = tf.reshape(tf.range(5 * 5 * 1), (5, 5, 1))
    np.testing.assert_array_equal(center_crop(image, 3).numpy()[..., 0],
                                  np.arange(25).reshape(5, 5)[1:4, 1:4])


def test_randaugment_policy_on_top():
    source = _positional_image(24)
    preset = TrainPreset(crop_size=16, resize_size=24, policy="randaugment")
    images, _ = next(iter(preset.dataset(_examples([source] * 4), batch_size=4, seed=0)))
    assert images.shape == (4, 16, 16, 3) and np.isfinite(images.numpy()).all()


@pytest.mark.parametrize("kwargs,message", [
    ({"crop_size": 0}, "crop_size"), ({"crop_size": 300}, "resize_size"),
    ({"flip_probability": 2}, "flip_probability"), ({"lighting_std": -1}, "lighting_std"),
    ({"policy": "autoaugment"}, "policy"),
])
def test_invalid_train_preset(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainPreset(**kwargs)


def test_invalid_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        EvalPreset().dataset(_examples([_positional_image(8)]), batch_size=0)


def test_presets_without_normalisation_give_pixel_values():
    """For models that normalise their inputs themselves (include_preprocessing=True)."""
    source = _positional_image(30)
    crop = EvalPreset(crop_size=20, resize_size=30, normalize=False).preprocess(source[None])
    np.testing.assert_allclose(crop.numpy()[0], source[5:25, 5:25], atol=1e-2)
    crops = EvalPreset(crop_size=20, resize_size=30, ten_crop=True,
                       normalize=False).ten_crops(source)
    np.testing.assert_allclose(crops.numpy()[4], source[5:25, 5:25], atol=1e-2)
    train = TrainPreset(crop_size=30, resize_size=30, flip_probability=0.0, lighting_std=0.0,
                        normalize=False)
    np.testing.assert_allclose(_batches(train.dataset(_examples([source]), batch_size=1))[0],
                               source, atol=1e-2)


def test_eval_preset_for_model():
    from keras_alexnet import AlexNet

    normalizing = EvalPreset.for_model(AlexNet(input_shape=(67, 67, 3),
                                               include_preprocessing=True))
    assert (normalizing.crop_size, normalizing.resize_size, normalizing.normalize) == (
        67, 256, False)
    # Wrapped in a Sequential or a functional model, it still normalises itself.
    inner = AlexNet(input_shape=(67, 67, 3), classes=3, include_preprocessing=True)
    inputs = keras.Input((67, 67, 3))
    for wrapped in (keras.Sequential([keras.Input((67, 67, 3)), inner]),
                    keras.Model(inputs, inner(inputs))):
        assert EvalPreset.for_model(wrapped) == EvalPreset.for_model(inner)
    plain = EvalPreset.for_model(AlexNet(variant="one_weird_trick"), ten_crop=True)
    assert (plain.crop_size, plain.normalize, plain.ten_crop) == (224, True, True)
    with pytest.raises(ValueError, match="square images"):
        EvalPreset.for_model(AlexNet(include_top=False, input_shape=(None, None, 3)))


def _full_resize_then_crop(image, resize_size, crop_size):
    """The reference: `tf.image.resize` of the whole image (short side `resize_size`,
    antialiased bilinear), then its central crop."""
    height, width = image.shape[-3:-1]
    scale = resize_size / min(height, width)
    size = [max(round(height * scale), resize_size), max(round(width * scale), resize_size)]
    resized = tf.image.resize(image, size, method="bilinear", antialias=True).numpy()
    top, left = (size[0] - crop_size) // 2, (size[1] - crop_size) // 2
    return resized[..., top : top + crop_size, left : left + crop_size, :]


@pytest.mark.parametrize("shape", [(300, 500), (500, 300), (256, 256), (257, 256), (100, 80),
                                   (4, 500), (500, 3), (1, 1)])
def test_squares_and_crops_match_resizing_the_whole_image(shape):
    """Only the part of the image the central crop keeps is resized, with the same
    values as resizing the whole image, on ordinary and extreme aspect ratios."""
    image = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    square = _full_resize_then_crop(image, 64, 64)
    got = TrainPreset(crop_size=48, resize_size=64).square(image).numpy()
    assert got.dtype == np.uint8
    expected = np.round(np.clip(square, 0, 255))
    # Only values within float rounding of x.5 may round the other way.
    assert np.abs(got.astype(int) - expected).max() <= 1
    assert np.all(np.abs(square % 1 - 0.5)[got != expected] < 0.02)
    preset = EvalPreset(crop_size=48, resize_size=64, normalize=False)
    np.testing.assert_allclose(preset.preprocess(image).numpy(),
                               _full_resize_then_crop(image, 64, 48), atol=0.02)
    batch = np.stack([image, image[::-1]])
    np.testing.assert_allclose(preset.preprocess(batch).numpy(),
                               _full_resize_then_crop(batch, 64, 48), atol=0.02)
    crops = EvalPreset(crop_size=48, resize_size=64, normalize=False).ten_crops(image).numpy()
    np.testing.assert_allclose(crops[4], square[8:56, 8:56], atol=0.02)  # the centre
    np.testing.assert_allclose(crops[3], square[16:, 16:], atol=0.02)  # a corner


def test_very_wide_or_tall_images_take_the_memory_of_their_crop():
    """A 12000x3 image resized whole to short side 256 is 3 GB of float32; its square,
    its evaluation crop and its ten crops need a few MB (peak RSS of a fresh process)."""
    script = textwrap.dedent("""
        import resource
        import numpy as np
        from keras_alexnet.presets import EvalPreset, TrainPreset

        def peak():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

        image = np.zeros((300, 400, 3), np.uint8)
        calls = (TrainPreset().square, EvalPreset().preprocess,
                 EvalPreset(ten_crop=True).ten_crops)
        for call in calls:  # loads TensorFlow's kernels
            call(image)
        before = peak()
        for shape in [(3, 12000, 3), (12000, 3, 3)]:
            for call in calls:
                call(np.full(shape, 7, np.uint8))
        print((peak() - before) / 1e6)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, "KERAS_BACKEND": "tensorflow"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.split()[-1]) < 200  # MB
