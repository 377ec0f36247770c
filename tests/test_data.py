import io
import os

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


@pytest.mark.backend_independent
def test_image_folder_lists_at_once_and_names_bad_files_as_the_pipeline_meets_them(
        hostile_folder, tmp_path, capfd):
    root, bad_names = hostile_folder
    with pytest.warns(UserWarning, match="zz_empty_class"):
        source = data.image_folder(root, validation_fraction=0.25)
    assert source.class_names == ["circle", "square", "triangle", "zz_empty_class"]
    # Counts come from the listing: 17 decodable files and 4 bad ones.
    assert source.counts["train"] + source.counts["validation"] == 21
    log = tmp_path / "skipped.txt"
    examples = source.train.concatenate(source.validation)
    for shuffle in (False, True):
        log.unlink(missing_ok=True)
        examples = source.examples("train", shuffle=shuffle, seed=1, skipped_log=str(log))
        images, labels = _collect(examples.concatenate(
            source.examples("validation", skipped_log=str(log))))
        assert len(images) == 17
        assert all(image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
                   for image in images)
        assert sorted(set(labels)) == [0, 1, 2]
        assert sorted(line.split("/")[-1] for line in log.read_text().split()) == bad_names
    # Without a log, each bad file is named on stderr.
    capfd.readouterr()
    assert len(_collect(source.train.concatenate(source.validation))[0]) == 17
    stderr = capfd.readouterr().err
    for name in bad_names:
        assert f"skipped a file that is not a decodable image: {root}" in stderr
        assert name in stderr


@pytest.mark.backend_independent
def test_a_bad_last_file_is_named_too(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "0.png").write_bytes(_encode(np.zeros((4, 4, 3), np.uint8), "RGB", "PNG"))
    (tmp_path / "a" / "zz.jpg").write_bytes(b"not an image")
    source = data.image_folder(tmp_path, validation_fraction=0.0)
    log = tmp_path / "log.txt"
    assert len(_collect(source.examples("train", skipped_log=str(log)))[0]) == 1
    assert log.read_text() == f"{tmp_path / 'a' / 'zz.jpg'}\n"


@pytest.mark.backend_independent
def test_file_names_that_are_not_utf8_are_skipped_and_named(tmp_path):
    root = data.write_synthetic_image_folder(tmp_path / "d", classes=2, images_per_class=3,
                                             image_size=(16, 16))
    bad = os.path.join(os.fsencode(root / "circle"), b"caf\xe9.jpg")
    with open(bad, "wb") as handle:
        handle.write((root / "circle" / "0000.jpg").read_bytes())
    with pytest.warns(UserWarning, match=r"not valid UTF-8.*caf\\xe9\.jpg"):
        source = data.image_folder(root, validation_fraction=0.0)
    assert source.counts == {"train": 6}
    assert [os.fsencode(name) for name in source.skipped] == [bad]
    assert len(_collect(source.train)[0]) == 6


@pytest.mark.backend_independent
def test_folders_that_cannot_be_read_are_skipped_and_named(tmp_path, monkeypatch):
    """Tests run as root, whom permissions do not stop: os.scandir refuses as it would."""
    root = data.write_synthetic_image_folder(tmp_path / "d", classes=3, images_per_class=3,
                                             image_size=(16, 16))
    first, middle, last = sorted(root.iterdir())
    (first / "more").mkdir()
    for name in ("a.jpg", "b.jpg"):
        (first / "more" / name).write_bytes((first / "0000.jpg").read_bytes())
    blocked = {str(first / "more"), str(last)}
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) in blocked:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    readable = [os.path.join(folder, name) for folder, subfolders, names in os.walk(root)
                if not any(folder.startswith(path) for path in blocked) for name in names]
    with pytest.warns(UserWarning, match=r"2 folder\(s\) that cannot be read.*Permission"):
        source = data.image_folder(root, validation_fraction=0.0)
    assert sorted(source.skipped) == sorted(blocked)
    assert source.counts == {"train": len(readable)}
    assert source.class_names == [path.name for path in (first, middle, last)]
    with pytest.warns(UserWarning, match=r"cannot be read.*more"):
        files, _ = data.folder.list_files(first)
    assert files == sorted(str(first / name) for name in os.listdir(first) if name != "more")


@pytest.mark.backend_independent
def test_split_folders_are_never_classes(tmp_path):
    for split, count in (("train", 3), ("test", 2)):
        data.write_synthetic_image_folder(tmp_path / split, classes=2, images_per_class=count,
                                          image_size=(16, 16))
    source = data.image_folder(tmp_path)
    assert source.class_names == ["circle", "square"]
    assert source.counts == {"train": 6, "validation": 4}
    assert "validation: test/" in source.name
    # val/ is preferred to test/ when both exist.
    data.write_synthetic_image_folder(tmp_path / "val", classes=2, images_per_class=1,
                                      image_size=(16, 16))
    source = data.image_folder(tmp_path)
    assert source.counts == {"train": 6, "validation": 2} and "validation: val/" in source.name
    # train/ alone: a held-out fraction of it.
    only_train = tmp_path / "only"
    data.write_synthetic_image_folder(only_train / "train", classes=2, images_per_class=10,
                                      image_size=(16, 16))
    source = data.image_folder(only_train, validation_fraction=0.2)
    assert source.class_names == ["circle", "square"]
    assert source.counts == {"train": 16, "validation": 4}
    # A validation folder without train/ is an error, not two classes.
    no_train = tmp_path / "no_train"
    data.write_synthetic_image_folder(no_train / "val", classes=2, images_per_class=1,
                                      image_size=(16, 16))
    with pytest.raises(data.NoUsableImagesError, match="no train/"):
        data.image_folder(no_train)


@pytest.mark.backend_independent
def test_validation_classes_missing_from_train_are_named_and_left_out(tmp_path):
    data.write_synthetic_image_folder(tmp_path / "train", classes=2, images_per_class=2,
                                      image_size=(16, 16))
    data.write_synthetic_image_folder(tmp_path / "val", classes=3, images_per_class=2,
                                      image_size=(16, 16))
    with pytest.warns(UserWarning, match=r"lacks.*\['triangle'\]"):
        source = data.image_folder(tmp_path)
    assert source.counts == {"train": 4, "validation": 4}
    assert sorted(_collect(source.validation)[1]) == [0, 0, 1, 1]


@pytest.mark.backend_independent
def test_hidden_folders_are_skipped_and_links_followed_once(tmp_path):
    root = data.write_synthetic_image_folder(tmp_path / "d", classes=2, images_per_class=2,
                                             image_size=(16, 16))
    checkpoints = root / "circle" / ".ipynb_checkpoints"
    checkpoints.mkdir()
    (checkpoints / "0000-checkpoint.jpg").write_bytes((root / "circle" / "0000.jpg").read_bytes())
    (root / ".hidden_class").mkdir()
    extra = data.write_synthetic_image_folder(tmp_path / "elsewhere", classes=1,
                                              images_per_class=3, image_size=(16, 16))
    (root / "square" / "linked").symlink_to(extra / "circle", target_is_directory=True)
    (root / "square" / "loop").symlink_to(root / "square", target_is_directory=True)
    source = data.image_folder(root, validation_fraction=0.0)
    assert source.class_names == ["circle", "square"]
    assert source.counts == {"train": 2 + 2 + 3}
    assert sorted(_collect(source.train)[1]) == [0, 0, 1, 1, 1, 1, 1]


@pytest.mark.backend_independent
def test_file_order_is_reshuffled_every_epoch_before_decoding(tmp_path):
    """A class-sorted folder gives well-mixed batches through a small decoded buffer."""
    classes = 16
    for label in range(classes):
        (tmp_path / f"c{label:02d}").mkdir()
        for index in range(24):
            pixels = np.full((4, 4, 3), label, np.uint8)
            (tmp_path / f"c{label:02d}" / f"{index}.png").write_bytes(
                _encode(pixels, "RGB", "PNG"))
    source = data.image_folder(tmp_path, validation_fraction=0.0)
    preset = TrainPreset(crop_size=4, resize_size=4, lighting_std=0.0)

    def first_batches(dataset, count=3):
        return [labels.numpy() for _, labels in dataset.take(count)]

    def entropy(labels):
        frequencies = np.bincount(labels, minlength=classes) / len(labels)
        frequencies = frequencies[frequencies > 0]
        return -(frequencies * np.log2(frequencies)).sum()

    # Uniformly random batches of 32 from 16 classes have an entropy near 3.6 bits;
    # the file list in listing order through a 16-image buffer gives about 1.
    batches = first_batches(preset.epochs(source, batch_size=32, seed=0, shuffle_buffer=16))
    assert min(entropy(labels) for labels in batches) > 3.0
    buffered = first_batches(preset.dataset(source.train, batch_size=32, seed=0,
                                            shuffle_buffer=16))
    assert max(entropy(labels) for labels in buffered) < 2.0


@pytest.mark.backend_independent
def test_seeded_epochs_repeat_exactly_and_resume_at_any_epoch(tmp_path):
    root = data.write_synthetic_image_folder(tmp_path / "d", classes=3, images_per_class=8,
                                             image_size=(20, 24))
    source = data.image_folder(root, validation_fraction=0.0)
    preset = TrainPreset(crop_size=12, resize_size=16)
    steps = source.counts["train"] // 4

    def run(first_epoch=0, epochs=2, **options):
        dataset = preset.epochs(source, batch_size=4, seed=7, first_epoch=first_epoch,
                                **options)
        return [(images.numpy(), labels.numpy())
                for images, labels in dataset.take(steps * epochs)]

    for options in ({}, {"cache": True}):
        first, again = run(**options), run(**options)
        for (a_images, a_labels), (b_images, b_labels) in zip(first, again):
            np.testing.assert_array_equal(a_images, b_images)
            np.testing.assert_array_equal(a_labels, b_labels)
        epoch_0, epoch_1 = first[:steps], first[steps:]
        assert not all(np.array_equal(a[1], b[1]) for a, b in zip(epoch_0, epoch_1))
        resumed = run(first_epoch=1, epochs=1, **options)
        for (a_images, a_labels), (b_images, b_labels) in zip(epoch_1, resumed):
            np.testing.assert_array_equal(a_images, b_images)
            np.testing.assert_array_equal(a_labels, b_labels)


@pytest.mark.backend_independent
def test_epochs_do_not_depend_on_tensorflows_global_seed(tmp_path):
    """Global seed 0 once broke the per-epoch shuffle; any other one changed the order."""
    import keras

    root = data.write_synthetic_image_folder(tmp_path / "d", classes=3, images_per_class=8,
                                             image_size=(20, 24))
    source = data.image_folder(root, validation_fraction=0.0)
    preset = TrainPreset(crop_size=12, resize_size=16)

    def labels():
        dataset = preset.epochs(source, batch_size=4, seed=7, shuffle_buffer=8)
        return np.concatenate([labels.numpy() for _, labels in dataset.take(12)])

    try:
        tf.random.set_seed(None)
        reference = labels()
        for set_seed in (lambda: keras.utils.set_random_seed(0), lambda: tf.random.set_seed(5)):
            set_seed()
            np.testing.assert_array_equal(labels(), reference)
    finally:
        tf.random.set_seed(None)


@pytest.mark.backend_independent
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


@pytest.mark.backend_independent
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


@pytest.mark.backend_independent
def test_train_and_val_subfolders(tmp_path):
    data.write_synthetic_image_folder(tmp_path / "train", classes=2, images_per_class=3,
                                      image_size=(24, 24))
    data.write_synthetic_image_folder(tmp_path / "val", classes=2, images_per_class=2,
                                      image_size=(24, 24), seed=1)
    source = data.image_folder(tmp_path)
    assert source.counts == {"train": 6, "validation": 4}
    assert source.class_names == ["circle", "square"]


@pytest.mark.backend_independent
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


def test_tfds_mock_data_grayscale_feeds_model_fit(monkeypatch):
    # mock_data fakes the download; the check that this machine could really download is moot.
    monkeypatch.setattr(data.tfds, "_check_online", lambda name, data_dir: None)
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


@pytest.mark.backend_independent
def test_tfds_imagenet_without_manual_files_says_what_is_needed(tmp_path):
    with pytest.raises(FileNotFoundError, match="ILSVRC2012_img_train.tar"):
        data.tfds_dataset("imagenet2012", data_dir=str(tmp_path), manual_dir=str(tmp_path))


@pytest.mark.backend_independent
def test_tfds_unknown_name_suggests_close_ones():
    with pytest.raises(ValueError, match=r"Unknown TFDS dataset 'mnits'\. Did you mean.*'mnist'"
                       ) as error:
        data.tfds_dataset("mnits")
    assert len(str(error.value)) < 400  # not TFDS's whole catalogue


@pytest.mark.backend_independent
def test_tfds_download_without_internet_fails_at_once(tmp_path, monkeypatch):
    # A proxy on a closed local port: what a machine without internet sees, on any machine.
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    with pytest.raises(data.OfflineError, match=r"'mnist' is not prepared.*download_and_prepare"):
        data.tfds_dataset("mnist", data_dir=str(tmp_path))
    assert not any(tmp_path.rglob("*.tfrecord*"))


@pytest.mark.backend_independent
def test_tfds_expands_user_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "ilsvrc")):
        data.tfds_dataset("imagenet2012", data_dir="~/tfds", manual_dir="~/ilsvrc")


@pytest.mark.backend_independent
def test_from_arguments_rejects_both():
    with pytest.raises(ValueError, match="not both"):
        data.from_arguments(data="x", dataset="mnist")


@pytest.mark.backend_independent
def test_the_embedded_dataset_appears_whole_when_processes_start_together(tmp_path):
    """Two writers at once (the processes of one run): whoever renames first wins,
    a reader never sees the folder without its last file, and no copy is left."""
    import threading

    from keras_alexnet.data.synthetic import COMPLETE_MARKER, default_dataset

    root = tmp_path / "datasets" / "shapes"
    seen_incomplete, done = [], threading.Event()

    def watch():
        while not done.is_set():
            if root.exists() and not (root / COMPLETE_MARKER).exists():
                seen_incomplete.append(sorted(path.name for path in root.iterdir()))

    sources = []
    watcher = threading.Thread(target=watch)
    writers = [threading.Thread(target=lambda: sources.append(
        default_dataset(root, images_per_class=4, image_size=(24, 24)))) for _ in range(2)]
    watcher.start()
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    done.set()
    watcher.join()
    assert len(sources) == 2 and not seen_incomplete
    assert sources[0].counts == sources[1].counts and sources[0].num_classes == 10
    assert sorted(path.name for path in root.parent.iterdir()) == ["shapes"]
    # Reused as it is afterwards.
    written = (root / COMPLETE_MARKER).stat().st_mtime_ns
    default_dataset(root, images_per_class=4, image_size=(24, 24))
    assert (root / COMPLETE_MARKER).stat().st_mtime_ns == written
