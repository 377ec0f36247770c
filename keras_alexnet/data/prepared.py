"""Prepare once, as the paper did: every image down-sampled to a square, in sharded TFRecords.

    data.prepare(data.image_folder("~/ilsvrc"), "~/ilsvrc-256")   # once, on all cores
    source = data.prepared("~/ilsvrc-256")                         # then train from it

The paper (§2) down-sampled every image once, before training: the short side
resized to 256, then the central 256x256 square. `prepare` writes exactly the
square `TrainPreset.square` computes, encoded as JPEG (quality 95) or PNG, so
that training decodes a small image instead of a full-size one, and, for JPEG,
only the window it crops (see `keras_alexnet.presets`).

A prepared folder holds:

- `plan.json`: written first: the source (its name, its `Source.identity`:
  for a folder, the resolved path and a digest of its files' names and
  sizes; its class names and the counts its listing gave), the size, the
  format and the shard size. A folder prepared from another source (another
  folder, or the same one with other files) or at another size is refused,
  never reused or overwritten; the name is not compared, so `"ds"` and its
  absolute path are one source.
- `<split>-<index>-of-<shards>.tfrecord`: the shards, each a range of a
  fixed order in which the classes are mixed (`Split.read_range`), as
  `tf.train.Example`s of `image` (encoded bytes), `label` and `key` (unique
  within the split). A shard is written to `<name>.tmp` and renamed into
  place once complete and synced.
- `progress.jsonl`: one line per complete shard (its examples and the files
  it skipped), appended after the rename: a shard without its line is
  written again, so a killed `prepare` continues where it stopped.
- `keras_alexnet_prepared.json`: written last, when every shard is
  complete: the plan, then per split the shards, the examples written and
  the files skipped as undecodable.
- `prepare.lock`: an empty file that a running `prepare` holds with an
  exclusive `flock`, so a second `prepare` into the same folder (every
  task of a cluster job running the same command, say) is refused instead
  of deleting the first one's temporary shards. It stays after `prepare`
  ends; the lock itself goes with the process, so a killed `prepare` never
  blocks the next.
"""

import concurrent.futures
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import threading
import time
from pathlib import Path

import tensorflow as tf

from keras_alexnet._validation import changed_leaves, check_can_create, check_positive_int
from keras_alexnet.data.folder import decode_rgb
from keras_alexnet.data.source import (NoUsableImagesError, Source, Split, listing_digest,
                                       read_each_epoch)

FORMAT = "keras-alexnet-prepared"
SCHEMA = 1
PLAN = "plan.json"
PROGRESS = "progress.jsonl"
METADATA = "keras_alexnet_prepared.json"
LOCK = "prepare.lock"
IMAGE_FORMATS = ("jpeg", "png")
# Shards written at once: each runs its own parallel tf.data pipeline, so
# that one shard's last images never leave the cores idle.
SHARDS_IN_FLIGHT = 4
# Shards read at once by a shuffled read (on top of the order of the shards,
# drawn every epoch, and the presets' shuffle buffer).
INTERLEAVED_SHARDS = 16
RECORD_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "key": tf.io.FixedLenFeature([], tf.int64),
}


class PreparedFolderError(ValueError):
    """A folder cannot be prepared into or read as asked (another source, incomplete, foreign)."""


@dataclasses.dataclass(frozen=True)
class _Shard:
    split: str
    index: int
    shards: int
    start: int
    stop: int

    @property
    def name(self):
        return f"{self.split}-{self.index:05d}-of-{self.shards:05d}.tfrecord"


# ------------------------------------------------------------------ prepare


def prepare(source, directory, size=256, format="jpeg", quality=95, images_per_shard=1024,
            log=print):
    """Writes every image of `source` once as a `size` x `size` square, in sharded TFRecords.

    Each image's short side is resized to `size` and its central square
    kept (§2 of [the paper](https://papers.nips.cc/paper/4824): "we
    down-sampled the images to a fixed resolution of 256 x 256"), exactly as
    `TrainPreset(resize_size=size).square` computes it, then encoded. The
    work runs on every core (parallel `tf.data` pipelines, several shards at
    once). Files that cannot be decoded are skipped, counted and named (in
    the log and in the metadata); a split where not one decodes is refused
    (`NoUsableImagesError`) before anything is written.

    It resumes: a killed or failed `prepare` (a full disk, say: the error
    says so and what is kept) continues, given the same source (the same
    `Source.identity`: for a folder, the same resolved path and files of the
    same names and sizes, however the path is written) and settings, with
    the shards not yet complete. A folder holding a preparation of another
    source, size, format or shard size is refused with the differences
    named, and a folder holding anything else is refused too: nothing is
    overwritten. A finished folder is left as it is.
    One `prepare` writes a folder at a time: while one runs, another into
    the same folder raises `PreparedFolderError` (see `prepare.lock` in the
    module docstring).

    Args:
        source: a `keras_alexnet.data.Source` whose splits can be read in
            ranges (`image_folder`, `tfds_dataset`, `default_dataset`).
        directory: the folder to write (created if needed).
        size: side of the squares (the paper's 256).
        format: `"jpeg"` (read back decoding only the crop window) or
            `"png"` (lossless, larger, decoded whole).
        quality: JPEG quality, 1 to 100.
        images_per_shard: examples per shard (the unit of resumption, and
            of sharing an epoch between tf.data service workers).
        log: where progress lines go.

    Returns:
        The metadata written to `keras_alexnet_prepared.json` (a dict).

    Example:

    >>> source = data.image_folder("~/images")
    >>> data.prepare(source, "~/images-256")            # doctest: +SKIP
    >>> prepared = data.prepared("~/images-256")        # doctest: +SKIP
    """
    plan = _plan(source, size, format, quality, images_per_shard)
    directory = Path(os.path.expanduser(os.fspath(directory)))
    finished = _check_directory(directory, plan)
    if finished is None:
        for split in source.splits:  # a preparation of nothing would "succeed"
            source.check_usable(split)
        directory.mkdir(parents=True, exist_ok=True)
        with _exclusive_lock(directory):
            # Checked again under the lock: another prepare may have planned or
            # finished this folder since.
            finished = _check_directory(directory, plan)
            if finished is None:
                return _write(source, directory, plan, log)
    log(f"{directory} is already prepared from {source.name}; nothing to do.")
    return finished


@contextlib.contextmanager
def _exclusive_lock(directory):
    """Holds `directory/prepare.lock` (`flock`) or refuses: one `prepare` per folder at a time.

    Two prepares writing one folder would delete each other's temporary
    shards. The lock is released when the process ends, however it ends;
    the file stays (removing it would race with a prepare taking it).
    """
    with open(directory / LOCK, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PreparedFolderError(
                f"Another prepare is writing into {directory} (it holds {directory / LOCK}); "
                "run one prepare per folder: wait for it to finish, or prepare into another "
                "folder (nothing was changed)."
            ) from None
        yield


def _write(source, directory, plan, log):
    """Writes the shards not yet complete, then the metadata; under the folder's lock."""
    if not (directory / PLAN).exists():
        _write_json_atomically(directory / PLAN, plan)
    for stale in directory.glob("*.tmp"):  # shards a killed run was writing
        stale.unlink()

    shards = _shards(plan)
    done = _read_progress(directory)
    pending = [shard for shard in shards
               if shard.name not in done or not (directory / shard.name).exists()]
    total = sum(shard.stop - shard.start for shard in pending)
    log(f"Preparing {source.name} into {directory}: {plan['size']}x{plan['size']} "
        f"{plan['image_format']}, "
        f"{len(shards) - len(pending)} of {len(shards)} shards already complete, "
        f"{total} images to write.")
    writer = _ShardWriter(source, directory, plan)
    started, written = time.perf_counter(), 0
    with concurrent.futures.ThreadPoolExecutor(SHARDS_IN_FLIGHT) as pool:
        futures = [pool.submit(writer.write, shard) for shard in pending]
        try:
            for future in concurrent.futures.as_completed(futures):
                shard, entry = future.result()
                done[shard.name] = entry
                written += entry["examples"] + len(entry["skipped"])
                log(f"{shard.name}: {entry['examples']} images"
                    + (f", {len(entry['skipped'])} skipped" if entry["skipped"] else "")
                    + f" ({len(done)}/{len(shards)} shards, "
                      f"{written / (time.perf_counter() - started):.0f} images/s)")
        except BaseException as error:
            for future in futures:
                future.cancel()
            concurrent.futures.wait(futures)
            # Shards that other threads finished after the failure are recorded too.
            raise _failure(error, directory, _read_progress(directory), shards) from error

    metadata = _metadata(plan, shards, done, source.skipped)
    _write_json_atomically(directory / METADATA, metadata)
    skipped = sum(len(split["skipped"]) for split in metadata["splits"].values())
    log(f"Prepared {directory}: "
        + ", ".join(f"{name} {split['examples']} images in {len(split['shards'])} shards"
                    for name, split in metadata["splits"].items())
        + (f"; {skipped} undecodable file(s) skipped, named in {METADATA}." if skipped else "."))
    return metadata


def _plan(source, size, format, quality, images_per_shard):
    check_positive_int("size", size)
    check_positive_int("images_per_shard", images_per_shard)
    if format not in IMAGE_FORMATS:
        raise ValueError(f"`format` must be one of {IMAGE_FORMATS}. Received: format={format!r}")
    if format == "jpeg" and (isinstance(quality, bool) or not isinstance(quality, int)
                             or not 1 <= quality <= 100):
        raise ValueError(f"`quality` must be an integer in [1, 100]. Received: quality={quality!r}")
    for name, split in source.splits.items():
        if split.read_range is None or split.count is None:
            raise ValueError(
                f"{source.name} cannot be read in ranges of known size (its {name!r} split), "
                "so it cannot be prepared resumably; prepare an image folder or a TFDS dataset."
            )
    return {
        "format": FORMAT, "schema": SCHEMA, "source": source.name, "identity": source.identity,
        "class_names": list(source.class_names), "listed": source.counts,
        "size": size, "image_format": format, "quality": quality if format == "jpeg" else None,
        "images_per_shard": images_per_shard,
    }


def _shards(plan):
    shards = []
    per_shard = plan["images_per_shard"]
    for split, count in plan["listed"].items():
        total = -(-count // per_shard)
        shards += [_Shard(split, index, total, index * per_shard,
                          min(count, (index + 1) * per_shard)) for index in range(total)]
    return shards


def _check_directory(directory, plan):
    """Refuses a folder that is not this preparation's; returns its metadata if finished."""
    if not directory.exists():
        # Created now, before any image is read.
        check_can_create(directory, f"the prepared folder {str(directory)!r}")
        return None
    if not directory.is_dir():
        raise PreparedFolderError(f"{directory} exists and is not a folder.")
    recorded = _our_plan(directory)
    if recorded is None:
        # A lock alone is what a prepare killed before its plan leaves.
        if any(entry.name != LOCK for entry in directory.iterdir()):
            raise PreparedFolderError(
                f"{directory} is not empty and holds no preparation (no {PLAN} written by "
                "keras-alexnet); prepare into a new or empty folder (nothing was changed)."
            )
        return None
    finished = _read_json(directory / METADATA)
    if "identity" in recorded:
        # The name is how the source was given ("ds", or its absolute path), not what it is.
        compared = [key for key in plan if key != "source"]
    elif finished is None:
        # The previous version identified a source by its name alone: whether
        # the shards already written come from these files is unknown, and
        # continuing could mix two datasets.
        raise PreparedFolderError(
            f"{directory} holds an unfinished preparation begun by an earlier version of "
            "keras-alexnet, which did not record which files it was preparing, so it cannot "
            "be continued safely: prepare into another folder, or delete this one yourself "
            "(nothing was changed).")
    else:
        # A finished folder of the previous version is returned as it is, nothing
        # written: the identity is unknown and not checked; its name is, as then.
        compared = [key for key in plan if key != "identity"]
    differences = [f"{key}: {old!r} -> {new!r}" for key, old, new in changed_leaves(
        {key: recorded.get(key) for key in compared}, {key: plan[key] for key in compared})]
    if differences:
        raise PreparedFolderError(
            f"{directory} holds a preparation of another source or with other settings; "
            f"differences: {'; '.join(differences)}. "
            + ("(identity.files: a digest of the names and sizes of each split's files.) "
               if any(line.startswith("identity.files") for line in differences) else "")
            + "Prepare into another folder, or delete this one yourself (nothing was changed)."
        )
    return finished


def _read_progress(directory):
    """`{shard name: entry}` of the shards recorded complete (a torn last line is ignored)."""
    done = {}
    try:
        lines = (directory / PROGRESS).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return done
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:  # the last line of a run killed while appending it
            continue
        done[entry["shard"]] = entry
    return done


class _ShardWriter:
    """Writes shards: a range of the source, squared and encoded in parallel, then renamed."""

    def __init__(self, source, directory, plan):
        from keras_alexnet.presets import TrainPreset  # presets imports keras_alexnet.data

        self.source = source
        self.directory = directory
        self.plan = plan
        self.square = TrainPreset(crop_size=plan["size"], resize_size=plan["size"]).square
        self.progress_lock = threading.Lock()

    def encode(self, image, label):
        square = self.square(image)
        if self.plan["image_format"] == "png":
            return tf.io.encode_png(square), label
        return tf.io.encode_jpeg(square, quality=self.plan["quality"]), label

    def write(self, shard):
        final = self.directory / shard.name
        temporary = final.with_name(final.name + ".tmp")
        skipped_log = final.with_name(final.name + ".skipped.tmp")
        try:
            examples = self.source.splits[shard.split].read_range(
                shard.start, shard.stop, str(skipped_log))
            encoded = examples.map(self.encode, num_parallel_calls=tf.data.AUTOTUNE,
                                   deterministic=True).prefetch(tf.data.AUTOTUNE)
            count = 0
            with tf.io.TFRecordWriter(str(temporary)) as writer:
                for image, label in encoded.as_numpy_iterator():
                    writer.write(_record(image, label, shard.index * self.plan[
                        "images_per_shard"] + count))
                    count += 1
            _sync(temporary)
            checksum = _sha256(temporary)
            os.replace(temporary, final)
            _sync(self.directory)
            skipped = (skipped_log.read_text(encoding="utf-8", errors="replace").split("\n")
                       if skipped_log.exists() else [])
            entry = {"shard": shard.name, "split": shard.split, "examples": count,
                     "skipped": [name for name in skipped if name],
                     "bytes": final.stat().st_size, "sha256": checksum}
            with self.progress_lock, open(self.directory / PROGRESS, "a",
                                          encoding="utf-8") as progress:
                progress.write(json.dumps(entry) + "\n")
                progress.flush()
                os.fsync(progress.fileno())
            return shard, entry
        finally:
            temporary.unlink(missing_ok=True)
            skipped_log.unlink(missing_ok=True)


def _record(image, label, key):
    feature = tf.train.Feature
    return tf.train.Example(features=tf.train.Features(feature={
        "image": feature(bytes_list=tf.train.BytesList(value=[image])),
        "label": feature(int64_list=tf.train.Int64List(value=[label])),
        "key": feature(int64_list=tf.train.Int64List(value=[key])),
    })).SerializeToString(deterministic=True)  # features in one order, every run


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sync(path):
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _failure(error, directory, done, shards):
    """The error a failed `prepare` raises: what failed, what is kept, how to continue."""
    kept = f"{len(done)} of {len(shards)} shards are complete and kept in {directory}"
    if isinstance(error, KeyboardInterrupt):
        return KeyboardInterrupt(f"Interrupted; {kept}. Run prepare again to continue.")
    text = str(error)
    full = (getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
            or "No space left on device" in text or "Disk quota exceeded" in text)
    if full:
        written = [directory / name for name in done if (directory / name).exists()]
        average = (sum(path.stat().st_size for path in written) / len(written)
                   if written else None)
        needed = (f" (about {average * (len(shards) - len(done)) / 2**30:.2f} GiB more at the "
                  "size of the shards so far)" if average else "")
        return OSError(errno.ENOSPC,
                       f"The disk is full: writing a shard into {directory} failed ({text}). "
                       f"{kept}; free space{needed} and run prepare again: it continues "
                       "from there.")
    return OSError(getattr(error, "errno", None) or errno.EIO,
                   f"Preparing into {directory} failed: {type(error).__name__}: {text}. "
                   f"{kept}; run prepare again to continue.")


def _metadata(plan, shards, done, skipped_at_listing):
    splits = {}
    for shard in shards:
        entry = done[shard.name]
        split = splits.setdefault(shard.split, {"shards": [], "shard_examples": [],
                                                "shard_bytes": [], "shard_sha256": [],
                                                "examples": 0, "skipped": []})
        split["shards"].append(shard.name)
        split["shard_examples"].append(entry["examples"])
        split["shard_bytes"].append(entry.get("bytes"))  # None: recorded by an older version
        split["shard_sha256"].append(entry.get("sha256"))
        split["examples"] += entry["examples"]
        split["skipped"] += entry["skipped"]
    # Files the listing could not even name to TensorFlow (not UTF-8), which no shard read.
    return {**plan, "splits": splits, "skipped_at_listing": list(skipped_at_listing)}


def _read_json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as error:
        raise PreparedFolderError(f"{path} is not valid JSON ({error}).") from None


def _write_json_atomically(path, content):
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(content, indent=2), encoding="utf-8")
    _sync(temporary)
    os.replace(temporary, path)


# ------------------------------------------------------------------- reading


def _our_plan(directory):
    """The plan in `directory/plan.json` if `prepare` wrote it, else `None`.

    Another program's folder may hold a `plan.json` of its own: only our
    `"format"` marks one of ours.
    """
    try:
        plan = json.loads((directory / PLAN).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return plan if isinstance(plan, dict) and plan.get("format") == FORMAT else None


def is_prepared(directory):
    """Whether `directory` holds a preparation (finished or not): `train.py --data` asks.

    A folder is one of ours by its metadata file's name or by a `plan.json`
    with our `"format"`, not by a `plan.json` alone.
    """
    directory = Path(os.path.expanduser(os.fspath(directory)))
    return (directory / METADATA).exists() or _our_plan(directory) is not None


def prepared(directory, verify=False):
    """The `Source` of a folder written by `prepare`.

    Its splits read the shards: in order without shuffling; shuffled, in an
    order of the shards drawn from `(seed, epoch)` (see `Source.examples`),
    `INTERLEAVED_SHARDS` at a time. Examples are decoded `size` x `size`
    squares (`Source.prepared_size`), so `TrainPreset(resize_size=size)`
    resizes nothing, and training takes that `resize_size`; for JPEG the
    source sets `jpeg_size`, and the training presets then decode only each
    crop's window (`Source.units` gives the JPEG bytes). The files skipped
    when it was prepared are `Source.skipped` (training names them in its
    `skipped_files.txt` and `summary.json`).

    Every shard's size is checked against the metadata at once, so a
    truncated or replaced shard is an error here rather than mid-epoch;
    `verify=True` also checks every shard's SHA-256 (reading every byte).

    Args:
        directory: the prepared folder.
        verify: check the shards' checksums too.

    Returns:
        A `Source`.

    Raises:
        PreparedFolderError: the folder is not completely prepared, or a
            shard is missing, of another size or (with `verify`) of other
            contents.

    Example:

    >>> source = data.prepared("~/images-256")          # doctest: +SKIP
    >>> source.counts                                   # doctest: +SKIP
    {'train': 900, 'validation': 100}
    """
    directory = Path(os.path.expanduser(os.fspath(directory)))
    metadata = _read_json(directory / METADATA)
    if metadata is None:
        plan = _our_plan(directory)
        if plan is not None:
            raise PreparedFolderError(
                f"{directory} is not completely prepared (prepare was interrupted); run "
                f"prepare again with its source ({plan.get('source')}) to finish it."
            )
        raise FileNotFoundError(f"Not a prepared folder (no {METADATA}): {directory}")
    if metadata.get("format") != FORMAT or metadata.get("schema") != SCHEMA:
        raise PreparedFolderError(
            f"{directory / METADATA} is not a keras-alexnet preparation of schema {SCHEMA}.")
    _check_shards(directory, metadata, verify)
    empty = [name for name, split in metadata["splits"].items() if not split["examples"]]
    if empty:  # written before `prepare` refused them; its epochs would hold nothing
        raise NoUsableImagesError(
            f"The {empty[0]!r} split of {directory} holds no image: not one of its files "
            f"could be decoded when it was prepared from {metadata['source']}.")
    size, image_format = metadata["size"], metadata["image_format"]
    shards = {name: [str(directory / shard) for shard in split["shards"]]
              for name, split in metadata["splits"].items()}
    splits = {name: _prepared_split(shards[name], split["examples"], size,
                                    decode=image_format != "jpeg")
              for name, split in metadata["splits"].items()}
    skipped = [*metadata.get("skipped_at_listing", []),
               *(name for split in metadata["splits"].values() for name in split["skipped"])]
    resolved = str(directory.resolve())
    return Source(splits=splits, class_names=metadata["class_names"], skipped=skipped,
                  name=f"{directory} ({size}x{size} {image_format}, prepared from "
                       f"{metadata['source']})",
                  prepared_size=size, jpeg_size=size if image_format == "jpeg" else None,
                  identify=lambda: {"path": resolved, "files": listing_digest(directory, shards)})


def _check_shards(directory, metadata, verify):
    """Raises PreparedFolderError for a missing shard, one of another size than
    recorded, or with `verify` one whose SHA-256 differs (folders prepared before
    sizes and sums were recorded are checked for presence only)."""
    missing, damaged = [], []
    for split in metadata["splits"].values():
        recorded = zip(split["shards"], split.get("shard_bytes") or [None] * len(split["shards"]),
                       split.get("shard_sha256") or [None] * len(split["shards"]))
        for name, size, checksum in recorded:
            path = directory / name
            if not path.exists():
                missing.append(name)
            elif size is not None and path.stat().st_size != size:
                damaged.append(f"{name} has {path.stat().st_size} bytes, {size} were written")
            elif verify and checksum is not None and _sha256(path) != checksum:
                damaged.append(f"{name} has other contents than were written (SHA-256)")
    if missing:
        raise PreparedFolderError(
            f"{directory} is missing {len(missing)} of its shards, e.g. {missing[:3]}; "
            "prepare it again into a new folder.")
    if damaged:
        raise PreparedFolderError(
            f"{directory} has {len(damaged)} damaged shard(s): {'; '.join(damaged[:3])}. "
            "Prepare it again into a new folder (or restore the shards from a copy).")


def _prepared_split(paths, count, size, decode):
    """A `Split` reading shard files; `decode`: `read_units` gives decoded images, not bytes."""

    def records(order_seed, shuffle):
        files = tf.constant(paths, tf.string)
        if shuffle:
            files = tf.gather(files, tf.random.experimental.stateless_shuffle(
                tf.range(len(paths), dtype=tf.int64), seed=order_seed))
        return tf.data.Dataset.from_tensor_slices(files).interleave(
            tf.data.TFRecordDataset, cycle_length=INTERLEAVED_SHARDS if shuffle else 1,
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def parse(record, decode_image):
        example = tf.io.parse_single_example(record, RECORD_FEATURES)
        image = example["image"]
        if decode_image:
            image = decode_rgb(image)
            image.set_shape([size, size, 3])
        return image, example["label"], example["key"]

    def read(shuffle, seed, epoch, skipped_log):
        return read_each_epoch(
            lambda order_seed: records(order_seed, shuffle).map(
                lambda record: parse(record, True)[:2], num_parallel_calls=tf.data.AUTOTUNE),
            shuffle, seed, epoch)

    def read_units(seed, epoch):
        order_seed = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
        return records(order_seed, shuffle=True).map(lambda record: parse(record, decode),
                                                      num_parallel_calls=tf.data.AUTOTUNE)

    return Split(count=count, read=read, read_units=read_units)
