"""A folder of images, one sub-folder per class: listed at once, decoded in the pipeline."""

import functools
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_alexnet.data.source import (NOTHING_DECODES, NoUsableImagesError, Source, Split,
                                       listing_digest, read_each_epoch)

TRAIN_SPLIT = "train"
# Extensions of the formats TensorFlow decodes; a folder with none of them
# is refused at once (other files are tried, and skipped if they fail).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
# Folder names that hold a validation split, in order of preference; a split
# folder is never taken for a class.
VALIDATION_SPLITS = ("val", "validation", "test")
# Files per unit when the tf.data service splits an epoch between its workers.
FILES_PER_UNIT = 64
# Seed of the class-mixed order `Split.read_range` reads a folder in.
MIXED_ORDER_SEED = 0


def decode_rgb(contents):
    """Any JPEG/PNG/GIF/BMP bytes -> uint8 RGB (grayscale, RGBA, CMYK included)."""
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


# ------------------------------------------------------------------ listing


def _visible_subfolders(folder):
    """Sub-folders of `folder` (links followed), hidden ones left out, sorted by name."""
    with os.scandir(folder) as entries:
        return sorted(entry.name for entry in entries
                      if not entry.name.startswith(".") and entry.is_dir())


def _walk_files(folder, undecodable_names, unreadable_folders):
    """Every visible file below `folder`, following links to folders once each.

    Hidden files and folders (`.ipynb_checkpoints/`, `.DS_Store`) are left
    out. Names that are not valid UTF-8 (which TensorFlow cannot take) go to
    `undecodable_names`; folders that cannot be listed (no read permission)
    go to `unreadable_folders`, as `(path, reason)`, and the rest is listed.
    """
    files = []
    visited = set()
    pending = [folder]
    while pending:
        current = pending.pop()
        try:
            status = os.stat(current)
            if (status.st_dev, status.st_ino) in visited:  # a link cycle, or two links
                continue
            visited.add((status.st_dev, status.st_ino))
            with os.scandir(current) as listing:
                entries = list(listing)
        except OSError as error:
            unreadable_folders.append((current, error.strerror or str(error)))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                entry.path.encode("utf-8")
            except UnicodeEncodeError:
                undecodable_names.append(os.fsencode(entry.path))
                continue
            try:
                if entry.is_dir():
                    pending.append(entry.path)
                elif entry.is_file():
                    files.append(entry.path)
            except OSError:  # a dangling link
                continue
    return sorted(files)


def list_files(folder):
    """`(files, undecodable)`: every visible file below `folder`, sorted, as
    `image_folder` lists them (hidden ones left out, links followed once), and
    the names that are not valid UTF-8 (bytes), which TensorFlow cannot open.
    Sub-folders that cannot be read are left out with a warning naming them."""
    undecodable, unreadable = [], []
    files = _walk_files(folder, undecodable, unreadable)
    _warn_unreadable(unreadable)
    return files, undecodable


def _warn_unreadable(unreadable_folders):
    if unreadable_folders:
        shown = "; ".join(f"{path} ({reason})" for path, reason in unreadable_folders[:10])
        warnings.warn(f"Skipped {len(unreadable_folders)} folder(s) that cannot be read, "
                      f"and the files in them: {shown}", stacklevel=3)


def _list_classes(root, class_names, undecodable_names, unreadable_folders):
    """`{class: [files]}` for the given class folders of `root` (missing ones empty)."""
    return {name: _walk_files(os.path.join(root, name), undecodable_names, unreadable_folders)
            if os.path.isdir(os.path.join(root, name)) else []
            for name in class_names}


def _flatten(files_by_class, class_names):
    files, labels = [], []
    for label, name in enumerate(class_names):
        files += files_by_class[name]
        labels += [label] * len(files_by_class[name])
    return files, labels


# ----------------------------------------------------------------- decoding


def _skipped_files_stream(skipped_log):
    """Where undecodable files are named, and the prefix of each line."""
    if skipped_log:
        return f"file://{os.path.abspath(skipped_log)}", ""
    return sys.stderr, "keras_alexnet: skipped a file that is not a decodable image: "


def _decode_in_order(paths, label_values, order, skipped_log, empty_message=None):
    """`(image, label, index)` of the files at listing indices `order`, decoded in parallel.

    Decoding runs in parallel but keeps the order of `order`, so a position
    missing after `ignore_errors` is an undecodable file: its name is looked
    up from `order` and written to `skipped_log` (or stderr) as the pass
    meets it. A last sentinel position reports files missing at the end.
    `empty_message`, if given, is raised when not one file decodes (an
    endless loop of empty epochs would otherwise idle).
    """
    output_stream, prefix = _skipped_files_stream(skipped_log)
    count = tf.size(order, out_type=tf.int64)

    def load(position):
        def decode():
            index = tf.gather(order, position)
            return decode_rgb(tf.io.read_file(tf.gather(paths, index))), index

        image, index = tf.cond(position < count, decode,
                               lambda: (tf.zeros([1, 1, 3], tf.uint8), tf.constant(-1, tf.int64)))
        return position, image, index

    def report_missing(state, element):
        expected, decoded = state[0], state[1]
        position = element[0]
        missing = tf.gather(paths, tf.gather(order, tf.range(expected, position)))
        checks = [tf.cond(
            tf.size(missing) > 0,
            lambda: tf.print(prefix + tf.strings.reduce_join(
                missing, separator="\n" + prefix), output_stream=output_stream),
            tf.no_op)]
        if empty_message is not None:
            checks.append(tf.debugging.Assert(tf.logical_or(position < count, decoded > 0),
                                              [empty_message]))
        with tf.control_dependencies(checks):
            return tf.stack([position + 1, decoded + 1]), element

    positions = tf.data.Dataset.range(count + 1)
    decoded = positions.map(load, num_parallel_calls=tf.data.AUTOTUNE,
                            deterministic=True).ignore_errors()
    return (decoded.scan(tf.zeros([2], tf.int64), report_missing)
            .filter(lambda position, image, index: position < count)
            .map(lambda position, image, index: (image, tf.gather(label_values, index), index)))


def _without_index(examples):
    return examples.map(lambda image, label, index: (image, label))


def _read_files(files, labels, shuffle, seed, epoch, skipped_log):
    """`(image, label)` of `files`, decoded in parallel; undecodable files skipped and named.

    Each epoch reads the files in the order of a permutation drawn from the
    epoch's seed (see `read_each_epoch`; the identity without `shuffle`).
    """
    count = len(files)
    paths = tf.constant(files, tf.string)
    label_values = tf.constant(labels, tf.int64)
    empty_message = f"No file of this split ({count} files, e.g. {files[0]}) " + NOTHING_DECODES

    def read_epoch(order_seed):
        order = (tf.random.experimental.stateless_shuffle(tf.range(count, dtype=tf.int64),
                                                          seed=order_seed)
                 if shuffle else tf.range(count, dtype=tf.int64))
        return _without_index(_decode_in_order(paths, label_values, order, skipped_log,
                                               empty_message))

    return read_each_epoch(read_epoch, shuffle, seed, epoch)


def _read_units(files, labels, seed, epoch):
    """One epoch in units of `FILES_PER_UNIT` files, for the tf.data service (`Split.read_units`).

    The order is the permutation `Source.examples` draws from `(seed,
    epoch)`, cut into units; a worker decodes a unit's files in order and
    names those that fail on its own standard error.
    """
    count = len(files)
    paths = tf.constant(files, tf.string)
    label_values = tf.constant(labels, tf.int64)
    order = tf.random.experimental.stateless_shuffle(
        tf.range(count, dtype=tf.int64),
        seed=tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)]))
    padding = -count % FILES_PER_UNIT
    units = tf.reshape(tf.concat([order, tf.fill([padding], tf.constant(-1, tf.int64))], 0),
                       [-1, FILES_PER_UNIT])

    def read_unit(unit):
        return _decode_in_order(paths, label_values, tf.boolean_mask(unit, unit >= 0),
                                skipped_log=None)

    return tf.data.Dataset.from_tensor_slices(units).interleave(
        read_unit, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _split(files, labels):
    # The fixed order `read_range` reads the split in: the listing is sorted
    # by class, and a prepared shard should hold every class.
    mixed_order = functools.cache(
        lambda: np.random.default_rng(MIXED_ORDER_SEED).permutation(len(files)))

    def read_range(start, stop, skipped_log):
        chosen = mixed_order()[start:stop]
        return _without_index(_decode_in_order(
            tf.constant([files[index] for index in chosen], tf.string),
            tf.constant([labels[index] for index in chosen], tf.int64),
            tf.range(len(chosen), dtype=tf.int64), skipped_log))

    return Split(count=len(files), read=functools.partial(_read_files, files, labels),
                 read_range=read_range, read_units=functools.partial(_read_units, files, labels))


# ------------------------------------------------------------------- source


def image_folder(root, validation_fraction=0.1, seed=0):
    """Images in `root/<class>/...`, or in `root/train/<class>/...` and a validation split.

    Returns at once: the folder is only listed. Files are decoded in the
    input pipeline; one that cannot be decoded (corrupt, truncated, empty or
    not an image) is skipped there and named as the pass meets it (see
    `Source.examples`), so the counts, taken from the listing, may be a few
    images more than an epoch holds. Grayscale, RGBA, CMYK and palette
    images become RGB.

    Layout:
    - `root/train/` beside `root/val/`, `root/validation/` or `root/test/`
      (the first found is the validation split; the source's name says
      which): the classes are the sub-folders of `train/`. Split folders are
      never classes. Images of a validation class that `train/` lacks are
      left out with a warning. `root/train/` alone: the held-out fraction of
      it is the validation split.
    - Otherwise every sub-folder of `root` is a class.
    - Hidden files and folders (names starting with "."), such as
      `.ipynb_checkpoints/`, are left out. Links to files and folders are
      followed, each folder once (a link cycle ends there). File names that
      are not valid UTF-8, and folders that cannot be read (no permission),
      are skipped and named (`Source.skipped`, and a warning).

    Its `Source.identity` is the resolved folder and a digest of each
    split's file names and sizes: what `prepare` checks when it resumes.

    Args:
        root: the folder.
        validation_fraction: without a validation folder, the fraction of
            each class held out for validation, chosen deterministically from
            `seed`. 0 gives no validation split.
        seed: seed of the held-out choice.

    Returns:
        A `Source`.
    """
    root = Path(os.path.expanduser(os.fspath(root)))
    if not 0 <= validation_fraction < 1:
        raise ValueError(
            f"`validation_fraction` must be in [0, 1). Received: {validation_fraction!r}"
        )
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder not found: {root}")
    subfolders = _visible_subfolders(root)
    splits = [name for name in (TRAIN_SPLIT, *VALIDATION_SPLITS) if name in subfolders]
    validation_name = next((name for name in VALIDATION_SPLITS if name in subfolders), None)
    if splits and TRAIN_SPLIT not in splits:
        raise NoUsableImagesError(
            f"{root} has the split folder(s) {splits} but no train/; expected "
            f"{root}/train/<class>/ beside {root}/{splits[0]}/<class>/."
        )
    undecodable, unreadable = [], []
    if splits:
        ignored = [name for name in subfolders if name not in splits]
        if ignored:
            warnings.warn(f"{root} has split folders; these other folders were ignored: "
                          f"{ignored}", stacklevel=2)
        class_folder = root / TRAIN_SPLIT
        class_names = _visible_subfolders(class_folder)
    else:
        class_folder = root
        class_names = subfolders
    if not class_names:
        raise NoUsableImagesError(
            f"{class_folder} has no class sub-folders; expected "
            f"{class_folder}/<class name>/<image files>."
        )
    files_by_class = _list_classes(class_folder, class_names, undecodable, unreadable)
    files, labels = _flatten(files_by_class, class_names)
    if not any(file.lower().endswith(IMAGE_EXTENSIONS) for file in files):
        raise NoUsableImagesError(
            f"No image files ({', '.join(IMAGE_EXTENSIONS)}) in the class folders of "
            f"{class_folder}."
        )
    empty = [name for name in class_names if not files_by_class[name]]
    if empty:
        warnings.warn(f"Class folder(s) with no files in {class_folder}: {empty}",
                      stacklevel=2)

    name = str(root)
    if validation_name is not None:
        validation_folder = root / validation_name
        extra = [name for name in _visible_subfolders(validation_folder)
                 if name not in class_names]
        if extra:
            warnings.warn(
                f"{validation_folder} has class folder(s) that {class_folder} lacks; their "
                f"images are left out (the model cannot predict them): {extra}",
                stacklevel=2)
        validation = _flatten(
            _list_classes(validation_folder, class_names, undecodable, unreadable), class_names)
        name = f"{root} (train/, validation: {validation_name}/)"
    else:
        held_out = _held_out(labels, len(class_names), validation_fraction, seed)
        validation = ([file for file, out in zip(files, held_out) if out],
                      np.asarray(labels)[held_out].tolist())
        files = [file for file, out in zip(files, held_out) if not out]
        labels = np.asarray(labels)[~held_out].tolist()
        if splits:
            name = f"{root} (train/, validation: {validation_fraction:.0%} held out)"
    if undecodable:
        shown = ", ".join(repr(path) for path in undecodable[:10])
        warnings.warn(f"Skipped {len(undecodable)} file(s) whose names are not valid UTF-8 "
                      f"(TensorFlow cannot open them): {shown}", stacklevel=2)
    _warn_unreadable(unreadable)
    files_by_split = {"train": files}
    source_splits = {"train": _split(files, labels)}
    if validation[0]:
        files_by_split["validation"] = validation[0]
        source_splits["validation"] = _split(*validation)
    # Resolved now: the files are named relative to the working folder of this call.
    resolved = str(root.resolve())
    return Source(splits=source_splits, class_names=class_names,
                  skipped=[*(os.fsdecode(path) for path in undecodable),
                           *(path for path, _ in unreadable)], name=name,
                  identify=lambda: {"path": resolved,
                                    "files": listing_digest(root, files_by_split)})


def _held_out(labels, num_classes, fraction, seed):
    """A boolean mask: `fraction` of each class, chosen deterministically from `seed`."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    held_out = np.zeros(len(labels), bool)
    for label in range(num_classes):
        members = np.flatnonzero(labels == label)
        held_out[rng.permutation(members)[:int(round(fraction * len(members)))]] = True
    return held_out
