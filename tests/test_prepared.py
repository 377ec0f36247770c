"""data.prepare / data.prepared: the paper's squares written once, resumably; the fused crop."""

import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_alexnet import AlexNet, data
from keras_alexnet.data.prepared import LOCK, METADATA, PROGRESS
from keras_alexnet.presets import TrainPreset

ROOT = Path(__file__).resolve().parents[1]
SIZE = 16
IDENTITY = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
BAD_FILES = {"circle/truncated.jpg": None, "square/notes.jpg": b"not an image"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three classes of 8 images of 24x32 (not square), and two undecodable files."""
    root = data.write_synthetic_image_folder(tmp_path_factory.mktemp("raw") / "images",
                                             classes=3, images_per_class=8,
                                             image_size=(24, 32))
    good = (root / "circle" / "0000.jpg").read_bytes()
    (root / "circle" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "square" / "notes.jpg").write_bytes(b"not an image")
    return root


def _source(folder):
    return data.image_folder(folder, validation_fraction=0.25)


def _collect(dataset):
    return [(image.numpy(), int(label)) for image, label in dataset]


def _reference_square(path, size):
    """The paper's down-sampling written out: short side to `size` (bilinear, antialiased), centre."""
    image = tf.io.decode_jpeg(tf.io.read_file(str(path)), channels=3)
    height, width = image.shape[:2]
    scale = size / min(height, width)
    resized = tf.image.resize(image, [max(size, round(height * scale)),
                                      max(size, round(width * scale))],
                              method="bilinear", antialias=True).numpy()
    top, left = (resized.shape[0] - size) // 2, (resized.shape[1] - size) // 2
    return np.clip(np.round(resized[top:top + size, left:left + size]), 0, 255).astype(np.uint8)


def _files(directory):
    return {path.name: path.read_bytes() for path in sorted(Path(directory).iterdir())}


@pytest.mark.backend_independent
def test_prepare_writes_the_papers_squares_and_names_skipped_files(folder, tmp_path):
    source = _source(folder)
    lines = []
    metadata = data.prepare(source, tmp_path / "png", size=SIZE, format="png",
                            images_per_shard=5, log=lines.append)
    assert metadata == json.loads((tmp_path / "png" / METADATA).read_text())
    assert metadata["class_names"] == ["circle", "square", "triangle"]
    assert metadata["listed"] == source.counts == {"train": 20, "validation": 6}
    skipped = sorted(name for split in metadata["splits"].values() for name in split["skipped"])
    assert skipped == sorted(str(folder / name) for name in BAD_FILES)
    assert sum(split["examples"] for split in metadata["splits"].values()) == 24
    assert any("skipped" in line for line in lines)

    prepared = data.prepared(tmp_path / "png")
    assert prepared.counts == {name: split["examples"]
                               for name, split in metadata["splits"].items()}
    assert prepared.class_names == source.class_names and prepared.jpeg_size is None
    assert sorted(prepared.skipped) == skipped
    examples = _collect(prepared.train) + _collect(prepared.validation)
    assert all(image.shape == (SIZE, SIZE, 3) for image, _ in examples)
    # Lossless PNG: the paper's squares of every decodable file, with its label, to the
    # rounding of values within float32 error of x.5 (only the crop's part is resized).
    expected = [(_reference_square(path, SIZE).astype(int), label)
                for label, name in enumerate(source.class_names)
                for path in sorted((folder / name).iterdir())
                if f"{name}/{path.name}" not in BAD_FILES]
    for image, label in examples:
        match = next(index for index, (square, square_label) in enumerate(expected)
                     if square_label == label and np.abs(square - image).max() <= 1)
        assert np.mean(expected.pop(match)[0] != image) < 0.01
    assert not expected
    # The shards hold a class-mixed order, not the listing's class-sorted one.
    labels = [label for _, label in _collect(prepared.train)]
    assert labels != sorted(labels)


@pytest.mark.backend_independent
def test_jpeg_preparation_matches_the_lossless_one(folder, tmp_path):
    source = _source(folder)
    for name, image_format in (("png", "png"), ("jpeg", "jpeg")):
        data.prepare(source, tmp_path / name, size=SIZE, format=image_format, quality=95,
                     images_per_shard=5, log=lambda line: None)
    lossless, jpeg = data.prepared(tmp_path / "png"), data.prepared(tmp_path / "jpeg")
    assert jpeg.jpeg_size == SIZE and "16x16 jpeg" in jpeg.name
    for split in ("train", "validation"):
        pairs = list(zip(_collect(lossless.examples(split)), _collect(jpeg.examples(split)),
                         strict=True))
        assert [a[1] for a, _ in pairs] == [b[1] for _, b in pairs]
        for (exact, _), (lossy, _) in pairs:  # the same squares, JPEG-encoded at quality 95
            np.testing.assert_array_equal(
                lossy, tf.io.decode_jpeg(tf.io.encode_jpeg(exact, quality=95)))


class NumberedSquares(tfds.core.GeneratorBasedBuilder):
    """A TFDS dataset built offline: 24 images whose red value is 5 x their number."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(names=["even", "odd"])}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for number in range(24):
            yield number, {"image": np.full((20, 30, 3), (5 * number, 0, 0), np.uint8),
                           "label": number % 2}


def _numbers(examples):
    return sorted((int(round(image[..., 0].mean() / 5)), label) for image, label in examples)


@pytest.mark.backend_independent
def test_a_tfds_dataset_is_prepared_range_by_range(tmp_path, monkeypatch):
    # Nothing to download: the check that this machine could is moot.
    monkeypatch.setattr(data.tfds, "_check_online", lambda name, data_dir: None)
    source = data.tfds_dataset("numbered_squares", data_dir=str(tmp_path / "tfds"),
                               validation_fraction=0.25)  # train[:75%] and train[75%:]
    assert source.counts == {"train": 18, "validation": 6}
    data.prepare(source, tmp_path / "prepared", size=16, format="png", images_per_shard=5,
                 log=lambda line: None)
    info = tfds.builder("numbered_squares", data_dir=str(tmp_path / "tfds")).info
    assert json.loads((tmp_path / "prepared" / "plan.json").read_text())["identity"] == {
        "tfds": info.full_name, "version": str(info.version),
        "splits": {"train": ["train[:75%]", 18], "validation": ["train[75%:]", 6]}}
    prepared = data.prepared(tmp_path / "prepared")
    for split in ("train", "validation"):  # what TFDS itself reads for the split
        assert (_numbers(_collect(prepared.examples(split)))
                == _numbers(_collect(source.examples(split))))
    everything = _numbers(_collect(prepared.train) + _collect(prepared.validation))
    assert everything == [(number, number % 2) for number in range(24)]


@pytest.mark.backend_independent
def test_a_folder_of_another_source_or_size_is_refused_and_left_alone(folder, tmp_path):
    source = _source(folder)
    target = tmp_path / "prepared"
    data.prepare(source, target, size=SIZE, images_per_shard=10, log=lambda line: None)
    before = _files(target)
    stamps = {path.name: path.stat().st_mtime_ns for path in target.iterdir()}

    with pytest.raises(data.PreparedFolderError, match=r"size: 16 -> 20"):
        data.prepare(source, target, size=20, images_per_shard=10)
    other = data.write_synthetic_image_folder(tmp_path / "other", classes=2,
                                              images_per_class=4, image_size=(20, 20))
    with pytest.raises(data.PreparedFolderError, match=r"identity.path: .*images' -> .*other'"):
        data.prepare(data.image_folder(other), target, size=SIZE, images_per_shard=10)
    lines = []
    again = data.prepare(source, target, size=SIZE, images_per_shard=10, log=lines.append)
    assert "already prepared" in lines[0] and again["splits"]
    assert _files(target) == before
    assert {path.name: path.stat().st_mtime_ns for path in target.iterdir()} == stamps

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(data.PreparedFolderError, match="not empty"):
        data.prepare(source, foreign, size=SIZE)
    assert _files(foreign) == {"notes.txt": b"mine"}

    with pytest.raises(FileNotFoundError, match="Not a prepared folder"):
        data.prepared(foreign)
    with pytest.raises(ValueError, match="cannot be read in ranges"):
        data.prepare(data.prepared(target), tmp_path / "again", size=8)
    for arguments, message in (({"format": "gif"}, "format"), ({"quality": 0}, "quality"),
                               ({"size": 0}, "size"), ({"images_per_shard": 0}, "per_shard")):
        with pytest.raises(ValueError, match=message):
            data.prepare(source, tmp_path / "bad", **arguments)
    assert not (tmp_path / "bad").exists()


@pytest.mark.backend_independent
def test_one_prepare_writes_a_folder_at_a_time(folder, tmp_path):
    source = _source(folder)
    target = tmp_path / "prepared"
    target.mkdir()
    # A prepare killed before writing its plan leaves its lock file alone:
    # the folder still counts as empty.
    (target / LOCK).touch()
    with open(target / LOCK) as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running prepare holds it
        with pytest.raises(data.PreparedFolderError,
                           match=f"Another prepare is writing into {re.escape(str(target))}"):
            data.prepare(source, target, size=SIZE, log=lambda line: None)
        assert _files(target) == {LOCK: b""}  # nothing written, nothing deleted
    data.prepare(source, target, size=SIZE, log=lambda line: None)  # once it is released
    assert sum(data.prepared(target).counts.values()) == 24  # every decodable image


@pytest.mark.backend_independent
def test_train_py_refuses_to_prepare_from_several_processes(folder, tmp_path):
    """Every task of a launcher would write into the same folder."""
    target = tmp_path / "prepared"
    command = [sys.executable, str(ROOT / "train.py"), "--backend", keras.backend.backend(),
               "--data", str(folder), "--prepare", str(target)]
    launched = {"KERAS_DISTRIBUTION_NUM_PROCESSES": "2", "KERAS_DISTRIBUTION_PROCESS_ID": "1",
                "KERAS_DISTRIBUTION_JOB_ADDRESSES": "localhost:1"}
    for arguments, environment in (
            (["--num-processes", "2", "--process-id", "0", "--job-addresses", "localhost:1"],
             {}),
            ([], launched)):
        refused = subprocess.run([*command, *arguments], cwd=ROOT, capture_output=True,
                                 text=True, env={**os.environ, **environment}, timeout=120)
        assert refused.returncode == 2, refused.stderr[-3000:]
        assert "--prepare writes" in refused.stderr and "names 2 processes" in refused.stderr
        assert "Run --prepare once" in refused.stderr
        assert not target.exists()
    malformed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120,
                               env={**os.environ, "KERAS_DISTRIBUTION_NUM_PROCESSES": "two"})
    assert malformed.returncode == 2, malformed.stderr[-3000:]
    assert "KERAS_DISTRIBUTION_NUM_PROCESSES must be a whole number. Received: 'two'" in (
        malformed.stderr)
    assert not target.exists()


PREPARE_SCRIPT = textwrap.dedent("""
    import sys
    from keras_alexnet import data
    data.prepare(data.image_folder(sys.argv[1], validation_fraction=0), sys.argv[2],
                 size=16, images_per_shard=2)
""")


def _start_prepare(*arguments, **options):
    return subprocess.Popen([sys.executable, "-c", PREPARE_SCRIPT, *map(str, arguments)],
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, **options)


def _run_prepare(*arguments, **options):
    return subprocess.run([sys.executable, "-c", PREPARE_SCRIPT, *map(str, arguments)],
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, **options)


@pytest.fixture(scope="module")
def many_images(tmp_path_factory):
    """120 small images: 60 shards of two, enough to kill a prepare in the middle."""
    return data.write_synthetic_image_folder(tmp_path_factory.mktemp("many") / "images",
                                             classes=3, images_per_class=40,
                                             image_size=(24, 32))


@pytest.mark.backend_independent
def test_a_killed_prepare_leaves_no_half_shard_and_continues(many_images, tmp_path):
    target = tmp_path / "prepared"
    process = _start_prepare(many_images, target, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    progress = target / PROGRESS
    while time.time() < deadline and process.poll() is None:
        if progress.exists() and progress.read_text().count("\n") >= 2:
            break
        time.sleep(0.005)
    assert process.poll() is None, "prepare finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (target / METADATA).exists()
    # Every file under a shard's own name is a whole shard: it reads to the end.
    shards = sorted(target.glob("*.tfrecord"))
    assert 2 <= len(shards) < 60
    for shard in shards:
        assert sum(1 for _ in tf.data.TFRecordDataset(str(shard))) == 2
    with pytest.raises(data.PreparedFolderError, match="not completely prepared"):
        data.prepared(target)

    resumed = _run_prepare(many_images, target, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    first_line = resumed.stdout.splitlines()[0]
    complete = int(first_line.split(" of 60 shards already complete")[0].rsplit(", ", 1)[1])
    assert complete >= 2
    assert data.prepared(target).counts == {"train": 120}
    # The same bytes as a preparation never interrupted.
    whole = tmp_path / "whole"
    assert _run_prepare(many_images, whole, capture_output=True).returncode == 0
    resumed, uninterrupted = _files(target), _files(whole)
    for name in (PROGRESS, METADATA):
        resumed.pop(name), uninterrupted.pop(name)  # progress lines come in finishing order
    assert resumed == uninterrupted
    assert (json.loads((target / METADATA).read_text())
            == json.loads((whole / METADATA).read_text()))


@pytest.mark.backend_independent
def test_a_full_disk_fails_clearly_and_the_next_run_continues(many_images, tmp_path):
    """A real ENOSPC: a small tmpfs mounted in a user namespace (no root needed)."""
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "--user", "--map-root-user", "--mount", "true"]).returncode != 0:
        pytest.skip("unprivileged user namespaces are not available to mount a small tmpfs")
    disk, copy = tmp_path / "disk", tmp_path / "copy"
    disk.mkdir()
    script = tmp_path / "prepare.py"
    script.write_text(PREPARE_SCRIPT)
    run = f"{sys.executable} {script} {many_images} {disk}/prepared"
    result = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
         f"mount -t tmpfs -o size=96k tmpfs {disk} && {{ {run} > {tmp_path}/first.txt "
         f"2>&1; echo $? > {tmp_path}/first_code; }}; "
         f"wc -l < {disk}/prepared/{PROGRESS} > {tmp_path}/recorded; "
         f"mount -o remount,size=4m {disk} && {run} > {tmp_path}/second.txt 2>&1 && "
         f"cp -r {disk}/prepared {copy}"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    first = (tmp_path / "first.txt").read_text()
    assert (tmp_path / "first_code").read_text().strip() != "0"
    assert "The disk is full" in first and "run prepare again" in first, first[-2000:]
    # The shards it says are kept are those recorded complete, finished in any thread.
    recorded = int((tmp_path / "recorded").read_text())
    assert f"{recorded} of 60 shards are complete and kept" in first, first[-2000:]
    assert result.returncode == 0, (tmp_path / "second.txt").read_text()[-2000:]
    second = (tmp_path / "second.txt").read_text()
    assert "0 of 60 shards already complete" not in second
    assert data.prepared(copy).counts == {"train": 120}
    assert not list(copy.glob("*.tmp"))


# --------------------------------------------------------- the fused crop


def _seeds(count):
    return [tf.constant([seed, 7 * seed + 1], tf.int64) for seed in range(count)]


@pytest.mark.backend_independent
def test_crop_window_is_tensorflows_stateless_random_crop():
    square = np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)
    preset = TrainPreset(crop_size=20, resize_size=32, flip_probability=0.0, lighting_std=0.0)
    for seed in _seeds(20):
        crop_seed = tf.random.experimental.stateless_split(seed, 3)[0]
        expected = tf.image.stateless_random_crop(square, [20, 20, 3], seed=crop_seed)
        np.testing.assert_array_equal(
            np.round(preset.random_crop(tf.constant(square), seed).numpy() * 255), expected)


def _smooth_square(size, seed=0):
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (size // 8, size // 8, 3)).astype(np.float32)
    return tf.cast(tf.image.resize(coarse, [size, size]), tf.uint8).numpy()


@pytest.mark.backend_independent
def test_encoded_square_jpegs_are_decoded_only_in_the_same_window():
    preset = TrainPreset(crop_size=56, resize_size=64)
    square = _smooth_square(64)
    # Full-resolution colour (4:4:4): the window decode equals decoding then cropping.
    full_colour = tf.io.encode_jpeg(square, quality=95, chroma_downsampling=False)
    for seed in _seeds(10):
        np.testing.assert_array_equal(
            preset.random_crop_encoded(full_colour, seed),
            preset.random_crop(tf.io.decode_jpeg(full_colour), seed))
    # Half-resolution colour (the JPEG default): equal except beside the left and
    # right edges of the window, where the decoder lacks the neighbouring colour.
    half_colour = tf.io.encode_jpeg(square, quality=95)
    differing_edges = 0
    for seed in _seeds(20):
        window = preset.random_crop_encoded(half_colour, seed).numpy()
        decoded = preset.random_crop(tf.io.decode_jpeg(half_colour), seed).numpy()
        columns = np.flatnonzero(np.abs(window - decoded).max(axis=(0, 2)) > 1e-6)
        assert set(columns) <= {0, 55}, columns
        assert np.abs(window - decoded).max() <= 16 / 255
        differing_edges += len(columns) > 0
    assert differing_edges > 0  # the window really was decoded on its own


@pytest.mark.backend_independent
def test_other_encoded_images_are_decoded_whole_then_squared():
    preset = TrainPreset(crop_size=20, resize_size=24)
    wide = np.random.default_rng(1).integers(0, 256, (30, 40, 3), np.uint8)
    for contents, decoded in ((tf.io.encode_png(wide), wide),
                              (tf.io.encode_jpeg(wide), tf.io.decode_jpeg(
                                  tf.io.encode_jpeg(wide)).numpy()),
                              (tf.io.encode_png(wide[:24, :24]), wide[:24, :24])):
        for seed in _seeds(5):
            np.testing.assert_array_equal(preset.random_crop_encoded(contents, seed),
                                          preset.augment(tf.constant(decoded), seed))


def test_prepared_jpeg_epochs_repeat_resume_and_feed_model_fit(folder, tmp_path):
    data.prepare(data.image_folder(folder, validation_fraction=0), tmp_path / "prepared",
                 size=SIZE, images_per_shard=4, log=lambda line: None)
    source = data.prepared(tmp_path / "prepared")
    assert source.jpeg_size == SIZE and source.counts == {"train": 24}
    preset = TrainPreset(crop_size=12, resize_size=SIZE)
    steps = 24 // 4

    def run(first_epoch=0, epochs=2):
        dataset = preset.epochs(source, batch_size=4, seed=3, first_epoch=first_epoch)
        return [(images.numpy(), labels.numpy()) for images, labels in
                dataset.take(steps * epochs)]

    first, again = run(), run()
    for (a_images, a_labels), (b_images, b_labels) in zip(first, again, strict=True):
        np.testing.assert_array_equal(a_images, b_images)
        np.testing.assert_array_equal(a_labels, b_labels)
    expected_labels = sorted(label for _, label in _collect(source.train))
    for epoch in (first[:steps], first[steps:]):
        assert sorted(np.concatenate([labels for _, labels in epoch])) == expected_labels
    for (a_images, _), (b_images, _) in zip(first[steps:], run(first_epoch=1, epochs=1),
                                            strict=True):
        np.testing.assert_array_equal(a_images, b_images)

    model = AlexNet(input_shape=(67, 67, 3), classes=3, initialization="he")
    model.compile("sgd", "sparse_categorical_crossentropy")
    big = TrainPreset(crop_size=67, resize_size=72)
    history = model.fit(big.epochs(source, batch_size=8, seed=0), steps_per_epoch=3,
                        epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.backend_independent
def test_train_py_prepares_and_trains_from_the_prepared_folder_at_its_size(folder, tmp_path):
    target, output = tmp_path / "prepared", tmp_path / "run"
    command = [sys.executable, str(ROOT / "train.py"), "--backend", keras.backend.backend()]
    prepared = subprocess.run([*command, "--data", str(folder), "--prepare", str(target),
                               "--resize-size", "72", "--validation-fraction", "0.25"],
                              cwd=ROOT, capture_output=True, text=True)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    assert f"Train from it with: python train.py --data {target}" in prepared.stdout
    assert "2 undecodable file(s) skipped" in prepared.stdout
    assert data.prepared(target).prepared_size == data.prepared(target).jpeg_size == 72
    refused = subprocess.run([*command, "--data", str(folder), "--prepare", str(target),
                              "--resize-size", "64"], cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode == 2 and "size: 72 -> 64" in refused.stderr
    train = [*command, "--data", str(target), "--epochs", "1", "--steps-per-epoch", "2",
             "--batch-size", "8", "--init", "he", "--quiet", "--seed", "0"]
    # The squares are never resized again: another --resize-size is refused.
    for arguments, message in ((["--image-size", "64", "--resize-size", "80"],
                                "train it with resize_size=72"),
                               (["--image-size", "80"], "too small for crops of 80")):
        refused = subprocess.run([*train, *arguments, "--output", str(output)], cwd=ROOT,
                                 capture_output=True, text=True)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr[-3000:]
        assert not output.exists()
    trained = subprocess.run([*train, "--image-size", "64", "--output", str(output)], cwd=ROOT,
                             capture_output=True, text=True)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "72x72 jpeg, prepared from" in trained.stdout
    settings = json.loads((output / "run.json").read_text())
    assert settings["recipe"]["resize_size"] == 72
    # What --resume compares: the folder's identity, which another preparation changes.
    identity = data.prepared(target).identity
    assert settings["source_identity"] == {"files": identity["files"]}
    summary = json.loads((output / "summary.json").read_text())
    assert summary["examples"] == data.prepared(target).counts["validation"]
    # The files skipped when it was prepared are named in the run too.
    bad_files = sorted(str(folder / name) for name in BAD_FILES)
    assert sorted(summary["skipped_files"]) == bad_files
    assert sorted((output / "skipped_files.txt").read_text().split()) == bad_files
    assert "2 file(s) were left out when the source was listed or prepared" in trained.stdout


@pytest.mark.backend_independent
def test_shards_are_checked_by_size_at_once_and_by_checksum_on_request(folder, tmp_path):
    target = tmp_path / "prepared"
    data.prepare(_source(folder), target, size=32, images_per_shard=4, log=lambda line: None)
    metadata = json.loads((target / METADATA).read_text())
    shard = target / metadata["splits"]["train"]["shards"][1]
    recorded = metadata["splits"]["train"]
    assert recorded["shard_bytes"][1] == shard.stat().st_size
    assert recorded["shard_sha256"][1] == hashlib.sha256(shard.read_bytes()).hexdigest()
    assert data.prepared(target, verify=True).counts == data.prepared(target).counts
    contents = shard.read_bytes()
    # A byte changed in place: the size is right, only the checksum tells.
    shard.write_bytes(contents[:100] + bytes([contents[100] ^ 1]) + contents[101:])
    data.prepared(target)
    with pytest.raises(data.PreparedFolderError, match=f"{shard.name} has other contents"):
        data.prepared(target, verify=True)
    # Truncated (a copy cut short): refused at once, before any epoch starts.
    shard.write_bytes(contents[: len(contents) // 2])
    with pytest.raises(data.PreparedFolderError,
                       match=f"{shard.name} has {len(contents) // 2} bytes, {len(contents)}"):
        data.prepared(target)


@pytest.mark.backend_independent
def test_files_skipped_at_listing_are_named_by_the_prepared_folder(tmp_path):
    root = data.write_synthetic_image_folder(tmp_path / "images", classes=2,
                                             images_per_class=3, image_size=(16, 16))
    bad_name = os.path.join(os.fsencode(root / "circle"), b"caf\xe9.jpg")
    with open(bad_name, "wb") as handle:
        handle.write((root / "circle" / "0000.jpg").read_bytes())
    source = data.image_folder(root, validation_fraction=0)
    assert len(source.skipped) == 1
    data.prepare(source, tmp_path / "prepared", size=16, log=lambda line: None)
    assert data.prepared(tmp_path / "prepared").skipped == source.skipped


def _undecodable_folder(root):
    """Two classes of four files, none of them an image."""
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for index in range(4):
            (root / name / f"{index}.jpg").write_bytes(b"not an image")
    return root


@pytest.mark.backend_independent
def test_a_folder_where_nothing_decodes_is_a_clear_error_before_anything_is_written(
        tmp_path):
    root = _undecodable_folder(tmp_path / "allbad")
    source = data.image_folder(root, validation_fraction=0.25)
    with pytest.raises(data.NoUsableImagesError, match=r"No file of the 'train' split"):
        data.prepare(source, tmp_path / "prepared", size=SIZE)
    assert not (tmp_path / "prepared").exists()
    with pytest.raises(data.NoUsableImagesError, match=r"No file of the 'train' split"):
        TrainPreset(crop_size=SIZE, resize_size=SIZE).epochs(source, batch_size=2)
    # train.py holds out no validation image of four per class.
    command = [sys.executable, str(ROOT / "train.py"), "--backend", keras.backend.backend(),
               "--data", str(root), "--epochs", "1", "--batch-size", "2", "--quiet"]
    for arguments, written in ((["--output", str(tmp_path / "run")], tmp_path / "run"),
                               (["--prepare", str(tmp_path / "prepared")],
                                tmp_path / "prepared")):
        result = subprocess.run([*command, *arguments], cwd=ROOT, capture_output=True,
                                text=True)
        assert result.returncode == 2, result.stderr[-3000:]
        assert "Traceback" not in result.stderr
        assert f"No file of the 'train' split of {root} (8 files)" in result.stderr
        assert not written.exists()


@pytest.mark.backend_independent
def test_an_empty_or_too_small_split_is_refused_not_read_forever(folder, tmp_path):
    """A preparation with no examples (written before prepare refused them) and a split
    smaller than one batch would give endless epochs of no batch."""
    target = tmp_path / "prepared"
    data.prepare(_source(folder), target, size=SIZE)
    metadata = json.loads((target / METADATA).read_text())
    metadata["splits"]["validation"].update(examples=0, shards=[], shard_examples=[])
    (target / METADATA).write_text(json.dumps(metadata))
    with pytest.raises(data.NoUsableImagesError, match=r"'validation' split.*no image"):
        data.prepared(target)
    preset = TrainPreset(crop_size=SIZE, resize_size=SIZE)
    split = data.Split(count=0, read=lambda *arguments: None)
    with pytest.raises(data.NoUsableImagesError, match=r"'train' split.*no image"):
        preset.epochs(data.Source(splits={"train": split}, class_names=["a"]), batch_size=2)
    small = _source(folder)
    count = small.counts["train"]
    with pytest.raises(ValueError, match=rf"{count} images, fewer than one batch of {count + 1}"):
        preset.epochs(small, batch_size=count + 1)


@pytest.mark.backend_independent
def test_a_prepared_folder_that_cannot_be_created_is_refused_before_reading(folder, tmp_path):
    (tmp_path / "afile").write_text("")
    source = _source(folder)
    source.check_usable = None  # reading an image would fail with a TypeError
    with pytest.raises(ValueError, match=r"afile is not a folder"):
        data.prepare(source, tmp_path / "afile" / "prepared", size=SIZE)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["afile"]


def _interrupt(target, shards_kept):
    """Makes a finished preparation look stopped after its first `shards_kept` shards."""
    (target / METADATA).unlink()
    lines = (target / PROGRESS).read_text().splitlines(keepends=True)
    (target / PROGRESS).write_text("".join(lines[:shards_kept]))
    for line in lines[shards_kept:]:
        (target / json.loads(line)["shard"]).unlink()


def _twin_folders(base):
    """Two folders `base/<a, b>/imgs` of the same classes and counts, other images."""
    return [data.write_synthetic_image_folder(base / name / "imgs", classes=2,
                                              images_per_class=6, image_size=(20, 20),
                                              seed=seed)
            for name, seed in (("a", 0), ("b", 1))]


@pytest.mark.backend_independent
def test_a_resumed_prepare_checks_the_source_by_its_folder_and_files(tmp_path, monkeypatch):
    first, second = _twin_folders(tmp_path)
    settings = dict(size=SIZE, format="png", images_per_shard=3, log=lambda line: None)
    reference = tmp_path / "reference"
    data.prepare(data.image_folder(first), reference, **settings)

    # Begun as "imgs" from one working folder, resumed through its absolute path: the same source.
    target = tmp_path / "prepared"
    monkeypatch.chdir(first.parent)
    data.prepare(data.image_folder("imgs"), target, **settings)
    _interrupt(target, shards_kept=1)
    monkeypatch.chdir(tmp_path)
    data.prepare(data.image_folder(first), target, **settings)
    shards = [path.name for path in reference.glob("*.tfrecord")]
    assert shards and all((target / name).read_bytes() == (reference / name).read_bytes()
                          for name in shards)

    # "imgs" from another working folder: other images, same class names and counts.
    _interrupt(target, shards_kept=1)
    before = _files(target)
    monkeypatch.chdir(second.parent)
    other = data.image_folder("imgs")
    assert other.name == "imgs" and other.counts == data.image_folder(first).counts
    with pytest.raises(data.PreparedFolderError,
                       match=rf"identity.path: '{re.escape(str(first.resolve()))}' -> "
                             rf"'{re.escape(str(second.resolve()))}'.*identity.files.train"):
        data.prepare(other, target, **settings)
    # The same folder with one image changed.
    monkeypatch.chdir(first.parent)
    changed = sorted((first / "circle").iterdir())[0]
    changed.write_bytes(changed.read_bytes() + b"\0")
    with pytest.raises(data.PreparedFolderError, match=r"differences: identity.files.train"):
        data.prepare(data.image_folder("imgs"), target, **settings)
    assert _files(target) == before


@pytest.mark.backend_independent
def test_a_folder_prepared_by_the_previous_version_is_read_and_never_resumed(folder, tmp_path):
    """Plans written before sources had an identity lack it: a finished folder is
    read as it is; an unfinished one cannot tell which files it began with."""
    source = _source(folder)
    target = tmp_path / "prepared"
    data.prepare(source, target, size=SIZE, images_per_shard=10, log=lambda line: None)
    for name in (METADATA, "plan.json"):
        recorded = json.loads((target / name).read_text())
        del recorded["identity"]
        (target / name).write_text(json.dumps(recorded))
    lines = []
    data.prepare(source, target, size=SIZE, images_per_shard=10, log=lines.append)
    assert "already prepared" in lines[0]
    assert data.prepared(target).class_names == source.class_names

    _interrupt(target, shards_kept=1)
    before = _files(target)
    with pytest.raises(data.PreparedFolderError, match="earlier version"):
        data.prepare(source, target, size=SIZE, images_per_shard=10)
    assert _files(target) == before


@pytest.mark.backend_independent
def test_a_plan_json_of_another_program_is_not_taken_for_a_preparation(tmp_path):
    root = data.write_synthetic_image_folder(tmp_path / "images", classes=2,
                                             images_per_class=3, image_size=(16, 16))
    for foreign in ('{"steps": ["label", "train"]}', "not json"):
        (root / "plan.json").write_text(foreign)
        assert not data.is_prepared(root)
        source = data.from_arguments(data=root)
        assert source.counts == data.image_folder(root).counts
        with pytest.raises(FileNotFoundError, match="Not a prepared folder"):
            data.prepared(root)
        with pytest.raises(data.PreparedFolderError, match="holds no preparation"):
            data.prepare(source, root, size=SIZE)
        assert (root / "plan.json").read_text() == foreign


@pytest.mark.backend_independent
def test_train_py_prepares_png_or_jpeg_of_a_chosen_quality(folder, tmp_path, capsys):
    import train as train_script

    arguments = ["--data", str(folder), "--resize-size", "32", "--validation-fraction", "0.25"]
    for name, options in (("png", ["--prepare-format", "png"]),
                          ("jpeg50", ["--prepare-quality", "50"])):
        assert train_script.main([*arguments, "--prepare", str(tmp_path / name), *options]) == 0
    png = json.loads((tmp_path / "png" / METADATA).read_text())
    jpeg = json.loads((tmp_path / "jpeg50" / METADATA).read_text())
    assert (png["image_format"], png["quality"]) == ("png", None)
    assert (jpeg["image_format"], jpeg["quality"]) == ("jpeg", 50)
    # Both hold squares of the size asked for, in their own encoding.
    first = next(iter(data.prepared(tmp_path / "png").validation))[0].numpy()
    record = next(iter(tf.data.TFRecordDataset(
        str(tmp_path / "jpeg50" / jpeg["splits"]["validation"]["shards"][0]))))
    example = tf.io.parse_single_example(record, {"image": tf.io.FixedLenFeature([], tf.string)})
    assert tf.io.decode_jpeg(example["image"]).shape == first.shape == (32, 32, 3)
    capsys.readouterr()
    for options, message in ((["--prepare-quality", "0"], "--prepare-quality must be in [1, 100]"),
                             (["--prepare-format", "png", "--prepare-quality", "90"],
                              "PNG is lossless")):
        target = tmp_path / "refused"
        assert train_script.main([*arguments, "--prepare", str(target), *options]) == 2
        assert message in capsys.readouterr().err
        assert not target.exists()
