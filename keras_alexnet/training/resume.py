"""What a resumed run may change, and the check that it changes nothing else."""

import dataclasses

from keras_alexnet.training.recipe import trained_variant

# Recipe fields a resumed run may change: more epochs, and the learning rate
# from the resumed epoch on (after a NaN loss, say). Anything else would
# change the model or the data under a half-trained run.
RESUMABLE_CHANGES = ("epochs", "learning_rate")


def _recipe_changes(previous, recipe, pretrained=None):
    """`{field: (old, new)}` of recipe fields that differ from a run's `run.json`.

    The values compared are those trained: a run.json that left the variant
    to its default or to the weights file (`pretrained`) trains that one.
    """
    previous = {**previous, "variant": trained_variant(previous.get("variant"), pretrained)}
    current = dataclasses.asdict(recipe)
    return {key: (previous.get(key), value) for key, value in current.items()
            if previous.get(key) != value}


def data_identity(source):
    """What a prepared folder holds, wherever it is: `Source.identity` without its
    path (its shards' names and sizes), so a moved folder resumes and one
    prepared again does not; `None` for other sources, whose counts are compared."""
    if source.prepared_size is None:
        return None
    return {key: value for key, value in source.identity.items() if key != "path"}


def check_resume(run, settings, recipe, source, pretrained=None):
    """Raises ValueError if `recipe` or `source` would change a run being resumed.

    Only `RESUMABLE_CHANGES` (more epochs, the learning rate) may differ from
    `run.json`, and a run that has done all its epochs continues only with
    more. The source must hold the run's data: the same name, class names,
    examples per split and (a prepared folder) its shards (`data_identity`).
    `pretrained`: the weights file of `recipe.fine_tune`, read.
    Returns a message about what changes, or `None`.
    """
    done = (run.read_checkpoint() or {}).get("epoch", 0)
    if done > recipe.epochs or (done == recipe.epochs and run.is_finished()):
        raise ValueError(
            f"The run in {run.path} has finished {done} epochs; pass more than {done} "
            "--epochs to train it further."
        )
    changes = _recipe_changes(settings["recipe"], recipe, pretrained)
    # The data: the order of a split's examples depends on how many there are, and
    # a prepared folder prepared again may hold others. A run.json from before
    # counts and identities were recorded has neither.
    recorded_counts = settings.get("counts", source.counts)
    data = [("source", settings["source"], source.name),
            ("class_names", settings["class_names"], source.class_names),
            ("prepared folder", settings.get("source_identity", data_identity(source)),
             data_identity(source))]
    data += [(f"{split} examples", recorded_counts.get(split), source.counts.get(split))
             for split in sorted(set(recorded_counts) | set(source.counts))]
    for key, old, new in data:
        if old != new:
            changes[key] = (old, new)
    refused = {key: change for key, change in changes.items() if key not in RESUMABLE_CHANGES}
    if refused:
        listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in refused.items())
        raise ValueError(
            f"--resume continues a run with the settings it started with; these differ from "
            f"its run.json: {listed}. Leave them out (they are read from run.json) or start "
            "a new run."
        )
    notes = []
    if "epochs" in changes:
        old, new = changes["epochs"]
        notes.append(f"Continuing to {new} epochs (the run started with {old}).")
    if "learning_rate" in changes:
        old, new = changes["learning_rate"]
        notes.append(f"Learning rate {new:g} from epoch {done + 1} on (run.json had {old:g}; "
                     "the schedule's later drops divide it).")
    return " ".join(notes) or None
