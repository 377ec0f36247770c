"""Argument checks shared by the package's public functions, and the comparison of settings."""

import os
from pathlib import Path


def check_positive_int(name, value):
    """Raises ValueError unless `value` is an int >= 1 (booleans rejected)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")


def check_writable_folder(folder, what):
    """Raises ValueError unless `folder` is an existing folder this process may write in.

    Commands check where they will write before reading or computing
    anything, so a typo in a destination costs nothing; `what` names the
    argument in the message.
    """
    if not os.path.isdir(folder):
        problem = "is not a folder" if os.path.exists(folder) else "does not exist"
        raise ValueError(f"Cannot write {what}: {folder} {problem}.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"Cannot write {what}: the folder {folder} is not writable.")


def check_can_create(path, what):
    """Raises ValueError unless the missing `path` can be created with its missing parents:
    the nearest existing folder above it must be a writable folder."""
    existing = next(folder for folder in Path(path).parents if folder.exists())
    check_writable_folder(existing, what)


def changed_leaves(first, second, prefix=""):
    """`(dotted key, first's value, second's value)` for every leaf of two nested
    dicts that differs, in the order of `first`'s keys, then `second`'s new ones."""
    changes = []
    for key in dict.fromkeys([*first, *second]):
        old, new = first.get(key), second.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changes += changed_leaves(old, new, f"{prefix}{key}.")
        elif old != new:
            changes.append((f"{prefix}{key}", old, new))
    return changes
