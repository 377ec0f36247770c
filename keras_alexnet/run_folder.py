"""A training run's folder: what it holds, how it is recognised, resumed and cleared.

A run folder is recognised by its `run.json`: only keras-alexnet writes one
with `"format": "keras-alexnet-run"` and a schema number. Everything else a
run writes, at every level, has a name `RUN_FILES` describes; `--overwrite`
deletes exactly those and refuses a folder that holds anything more (a file
of the user's in `backup/` or `tensorboard/` too), naming it.

The checkpoint a killed run resumes from is committed in one step: the
weights (model and optimizer, learning rate included) go to a new file
under `backup/`, then `backup/checkpoint.json` (epoch, weights file,
learning-rate schedule state, random generator states) replaces the
previous one atomically. A new best model waits in `backup/` (`best.keras`,
then its score in `best.json`) and is moved up beside `run.json` once the
checkpoint of its epoch is committed (`settle_best`). Whatever was written
after the last commit (a `log.csv` row, TensorBoard events, a best model of
an epoch that did not finish) is rolled back on resume, so the log, the
schedule, TensorBoard and the best model agree with the checkpoint.
"""

import base64
import csv
import json
import os
import re
from pathlib import Path

import keras
import numpy as np

RUN_FORMAT = "keras-alexnet-run"
RUN_SCHEMA = 1
SETTINGS = "run.json"
SUMMARY = "summary.json"
LOG = "log.csv"
BEST_MODEL = "best.keras"
BEST_SCORE = "best.json"
FINAL_MODEL = "final.keras"
SKIPPED_FILES = "skipped_files.txt"
BACKUP = "backup"
TENSORBOARD = "tensorboard"
CHECKPOINT = "checkpoint.json"
PARTIAL_BEST_MODEL = f"partial-{BEST_MODEL}"
# The weights of the checkpoint after N epochs, in `backup/`.
WEIGHTS = "epoch-{:04d}.weights.h5"
PARTIAL_WEIGHTS_SUFFIX = ".partial.weights.h5"


def _exactly(*names):
    return "|".join(re.escape(name) for name in names)


# Keras' TensorBoard callback writes `train/` and `validation/`, each
# holding event files (`events.out.tfevents.<time>.<host>.<pid>.<n>.v2`).
_EVENTS = {r"events\.out\.tfevents\..+": None}
# Everything a run writes, as a tree: a regular expression of names at each
# level, mapped to what such a folder holds (`None`: a file). A file's name
# plus ".tmp" is the temporary file it is written through.
RUN_FILES = {
    _exactly(SETTINGS, SUMMARY, LOG, BEST_MODEL, BEST_SCORE, FINAL_MODEL, SKIPPED_FILES): None,
    re.escape(BACKUP): {
        _exactly(CHECKPOINT, BEST_MODEL, BEST_SCORE, PARTIAL_BEST_MODEL): None,
        r"epoch-\d{4,}\.weights\.h5" + f"(?:{re.escape(PARTIAL_WEIGHTS_SUFFIX)})?": None,
    },
    re.escape(TENSORBOARD): {"train|validation": _EVENTS},
}


class RunFolderError(RuntimeError):
    """The output folder cannot be used as asked (exists, unwritable, foreign)."""


def write_json_atomically(path, content):
    """Writes JSON to `path` through a temporary file and a rename."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(content, indent=2, default=str))
    os.replace(temporary, path)


def _run_entries(folder, tree, foreign):
    """The entries under `folder` that a run writes (`tree`: see `RUN_FILES`), each
    folder after what it holds; appends the others to `foreign`, not looking inside."""
    owned = []
    for entry in sorted(os.scandir(folder), key=lambda entry: entry.name):
        path = Path(entry.path)
        is_folder = entry.is_dir(follow_symlinks=False)
        name = entry.name
        if not is_folder and name.endswith(".tmp"):
            name = name[:-len(".tmp")]
        kinds = [held for pattern, held in tree.items() if re.fullmatch(pattern, name)]
        # A file where a run writes a folder is not the run's, nor the reverse; nor a
        # symbolic link named like a run's folder (it leads elsewhere).
        if not kinds or (kinds[0] is not None) != is_folder:
            foreign.append(path)
            continue
        if is_folder:
            owned += _run_entries(path, kinds[0], foreign)
        owned.append(path)
    return owned


class RunFolder:
    """The folder of one training run (see the module docstring).

    Args:
        path: the folder; `~` is expanded.
    """

    def __init__(self, path):
        self.path = Path(path).expanduser().resolve()

    def __truediv__(self, name):
        return self.path / name

    # ------------------------------------------------------------- identity

    def read_settings(self):
        """The run's settings from `run.json`, or `None` if it is not our run."""
        try:
            settings = json.loads((self.path / SETTINGS).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(settings, dict) or settings.get("format") != RUN_FORMAT:
            return None
        if not isinstance(settings.get("schema"), int) or settings["schema"] > RUN_SCHEMA:
            raise RunFolderError(
                f"{self.path} holds a run of keras-alexnet run schema "
                f"{settings.get('schema')!r}, newer than this version reads ({RUN_SCHEMA})."
            )
        return settings

    def write_settings(self, settings):
        from keras_alexnet import __version__

        write_json_atomically(self.path / SETTINGS, {
            "format": RUN_FORMAT, "schema": RUN_SCHEMA, "keras_alexnet_version": __version__,
            **settings,
        })

    def is_finished(self):
        return (self.path / SUMMARY).exists()

    def entries(self):
        """`(owned, foreign)`: the paths of what a run writes, each folder after what
        it holds (the order to delete them in), and the relative names of everything
        else (`backup/NOTES.txt`; a foreign folder without its contents)."""
        owned, foreign = [], []
        if self.path.is_dir():
            owned = _run_entries(self.path, RUN_FILES, foreign)
        return owned, sorted(path.relative_to(self.path).as_posix() for path in foreign)

    def foreign_entries(self):
        """The entries in the folder that a run does not write (see `entries`)."""
        return self.entries()[1]

    # ------------------------------------------------------------ checks

    def check(self, resume=False, overwrite=False, writes=True):
        """Raises `RunFolderError` unless the folder can be used as asked; writes nothing.

        Returns the run's settings when the folder holds a run, else `None`.
        `writes=False` is for a process that only reads the folder (every
        process of a run over several processes but process 0): nothing
        about writing is checked, and a run to resume must be readable.
        """
        if resume and overwrite:
            raise RunFolderError("Use either --resume or --overwrite, not both.")
        if not writes:
            settings = self.read_settings() if resume else None
            if resume and settings is None:
                raise RunFolderError(
                    f"Nothing to resume: {self.path} holds no run ({SETTINGS}) that this "
                    "process can read. Every process of a run resumes from the run folder "
                    "process 0 writes: put it on a filesystem all of them see, or copy it "
                    "to the same path on every machine."
                )
            return settings
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"The output {self.path} exists and is not a folder.")
        empty = not self.path.exists() or not any(self.path.iterdir())
        settings = None if empty else self.read_settings()
        if not empty and settings is None:
            raise RunFolderError(
                f"{self.path} is not empty and is not a keras-alexnet run folder (no "
                f"{SETTINGS} written by keras-alexnet); nothing in it was touched. Choose "
                "another --output."
            )
        if resume and settings is None:
            raise RunFolderError(f"Nothing to resume: {self.path} holds no run ({SETTINGS}).")
        if settings is not None and not (resume or overwrite):
            state = "a finished run" if self.is_finished() else "an unfinished run"
            raise RunFolderError(
                f"{self.path} already holds {state}; pass --resume to continue it or "
                "--overwrite to start again."
            )
        foreign = self.foreign_entries() if settings is not None and overwrite else []
        if foreign:
            raise RunFolderError(
                f"{self.path} holds a keras-alexnet run and also "
                f"{foreign}, which a run does not write; --overwrite "
                "deletes only a run's own files, so nothing was touched. Move those "
                "elsewhere or choose another --output."
            )
        ancestor = next(path for path in [self.path, *self.path.parents] if path.exists())
        if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
            raise RunFolderError(f"Cannot create or write {self.path}: {ancestor} is not a "
                                 "writable folder.")
        return settings

    def create(self, resume=False, overwrite=False):
        """Checks the folder, clears a previous run with `overwrite`, and makes it."""
        settings = self.check(resume, overwrite)
        if settings is not None and overwrite:
            # One by one, not rmtree: a folder that something else wrote into since
            # the check is not emptied (rmdir fails).
            for path in self.entries()[0]:
                if path.is_dir() and not path.is_symlink():
                    path.rmdir()
                else:
                    path.unlink()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunFolderError(f"Cannot create {self.path}: {error}") from error
        return self

    # -------------------------------------------------------- checkpoints

    def save_checkpoint(self, model, epoch, state):
        """Commits the state after `epoch` epochs: weights first, then the record.

        The record also holds the model's random generator states (dropout's),
        which `save_weights` leaves out, and on PyTorch torch's own generator
        states, so a seeded run resumes exactly.
        """
        backup = self.path / BACKUP
        backup.mkdir(exist_ok=True)
        previous = self.read_checkpoint()
        weights = WEIGHTS.format(epoch)
        temporary = backup / f"{weights}{PARTIAL_WEIGHTS_SUFFIX}"
        model.save_weights(temporary)
        os.replace(temporary, backup / weights)
        random_states = [keras.ops.convert_to_numpy(variable).tolist()
                         for variable in _random_states(model)]
        write_json_atomically(backup / CHECKPOINT, {
            "epoch": epoch, "weights": weights, "random_states": random_states,
            "torch_random_states": _torch_random_states(), **state})
        if previous is not None and previous["weights"] != weights:
            (backup / previous["weights"]).unlink(missing_ok=True)
        self.settle_best()

    def read_checkpoint(self):
        """The last committed checkpoint record, or `None` before the first epoch ends."""
        return _read_json(self.path / BACKUP / CHECKPOINT)

    def _best_candidate(self):
        """The record of the best model waiting in `backup/` (or `None`), and whether
        the checkpoint has committed its epoch."""
        candidate = _read_json(self.path / BACKUP / BEST_SCORE)
        done = (self.read_checkpoint() or {}).get("epoch", 0)
        return candidate, candidate is not None and candidate["epoch"] < done

    def read_best(self):
        """The best model's record (`monitor`, `value`, `epoch`) as of the last
        checkpoint, or `None`; one committed but not yet moved up counts."""
        candidate, committed = self._best_candidate()
        return candidate if committed else _read_json(self.path / BEST_SCORE)

    def settle_best(self):
        """Moves the best model waiting in `backup/` up to `best.keras` and `best.json`
        if the checkpoint has committed its epoch, else deletes it.

        Called after each commit, and on resume for a run killed before or
        after the commit of an epoch with a new best model.
        """
        backup = self.path / BACKUP
        _, committed = self._best_candidate()
        # The model first: a kill between the two moves leaves the record in
        # backup/, which the resume then moves.
        for name in (BEST_MODEL, BEST_SCORE):
            if not committed:
                (backup / name).unlink(missing_ok=True)
            elif (backup / name).exists():
                os.replace(backup / name, self.path / name)

    def restore_checkpoint(self, model, roll_back=True):
        """Loads the committed weights into `model`, rolls the logs back to them and
        settles the best model (`settle_best`).

        `roll_back=False` only reads: for the processes of a run over
        several processes that do not write (all but process 0).
        Returns the checkpoint record (`epoch`: epochs done), or `None`.
        Pass it to `restore_torch_random_states` once `fit` has started.
        """
        checkpoint = self.read_checkpoint()
        if checkpoint is not None:
            if model.optimizer is not None and not model.optimizer.built:
                model.optimizer.build(model.trainable_variables)
            model.load_weights(self.path / BACKUP / checkpoint["weights"])
            for variable, value in zip(_random_states(model), checkpoint["random_states"]):
                variable.assign(np.asarray(value, keras.ops.convert_to_numpy(variable).dtype))
        if roll_back:
            self.roll_back_logs(checkpoint["epoch"] if checkpoint else 0)
            self.settle_best()
        return checkpoint

    def roll_back_logs(self, epochs):
        """Drops `log.csv` rows and TensorBoard epoch events of epochs >= `epochs`."""
        log = self.path / LOG
        if log.exists():
            with open(log, newline="") as handle:
                rows = list(csv.reader(handle))
            kept = rows[:1] + [row for row in rows[1:] if row and int(row[0]) < epochs]
            if len(kept) != len(rows):
                temporary = log.with_name(log.name + ".tmp")
                with open(temporary, "w", newline="") as handle:
                    csv.writer(handle).writerows(kept)
                os.replace(temporary, log)
        tensorboard = self.path / TENSORBOARD
        if tensorboard.is_dir():
            for events in tensorboard.rglob("events.out.tfevents.*"):
                _drop_events_from_step(events, epochs)


def _read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None


def _random_states(model):
    """The state variables of the model's random generators (dropout), in a fixed order."""
    return [variable for variable in model.variables
            if variable.path.endswith("seed_generator_state")]


def _torch_random_states():
    """torch's global generator states (CPU, then each GPU's), or None on other backends.

    On PyTorch, Keras' Dropout without a seed draws its masks from torch's
    global generator rather than from its seed generator (the fast path of
    `keras.src.backend.torch.random.dropout`), so those states are part of
    what a resumed run must restore.
    """
    if keras.backend.backend() != "torch":
        return None
    import torch

    states = [torch.get_rng_state()]
    if torch.cuda.is_available():
        states += torch.cuda.get_rng_state_all()
    return [base64.b64encode(state.numpy().tobytes()).decode("ascii") for state in states]


def restore_torch_random_states(checkpoint):
    """Sets torch's generators to a checkpoint's states (PyTorch only; else nothing).

    Call it just before the first training step of the resumed `fit`:
    starting `fit` draws from torch's global generator (each epoch
    iterator's torch DataLoader takes a base seed from it), which the
    uninterrupted run did only once, at its start.
    """
    states = (checkpoint or {}).get("torch_random_states")
    if not states or keras.backend.backend() != "torch":
        return
    import torch

    states = [torch.frombuffer(bytearray(base64.b64decode(state)), dtype=torch.uint8)
              for state in states]
    torch.set_rng_state(states[0])
    if torch.cuda.is_available() and len(states) - 1 == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states[1:])


def _drop_events_from_step(path, first_dropped_step):
    """Rewrites a TensorBoard event file without its events at `step >= first_dropped_step`.

    Keras' TensorBoard callback writes epoch summaries at `step=epoch`; the
    file version record (step 0) and earlier epochs are kept.
    """
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    # A killed writer can leave a truncated last record: keep what reads.
    dataset = tf.data.TFRecordDataset(str(path)).ignore_errors()
    records = [bytes(record.numpy()) for record in dataset]
    kept = [record for record in records
            if event_pb2.Event.FromString(record).step < first_dropped_step
            or not event_pb2.Event.FromString(record).HasField("summary")]
    if len(kept) == len(records):
        return
    temporary = path.with_name(path.name + ".tmp")
    with tf.io.TFRecordWriter(str(temporary)) as writer:
        for record in kept:
            writer.write(record)
    os.replace(temporary, path)
