"""The package surface: every name the README and the docs use, from a fresh
`import keras_alexnet`, which imports nothing heavy beyond what Keras itself does;
and the docs site builds (`mkdocs build --strict`)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import keras_alexnet

ROOT = Path(__file__).resolve().parents[1]


DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def readme_names():
    """Every `keras_alexnet.a.b` the README and the guides write, down to the last attribute."""
    text = "\n".join(document.read_text() for document in DOCUMENTS)
    return sorted(set(re.findall(r"\bkeras_alexnet(?:\.[A-Za-z_]\w*)+", text)))


@pytest.mark.backend_independent
def test_every_readme_name_resolves_after_a_plain_import():
    names = readme_names()
    assert "keras_alexnet.augment.PCALighting" in names  # the docs do use dotted names
    script = (
        "import functools, sys, keras\n"
        "before = set(sys.modules)\n"
        "import keras_alexnet\n"
        "heavy = {'torch', 'jax', 'tensorflow_datasets', 'matplotlib'}\n"
        "assert not heavy & (set(sys.modules) - before), heavy & set(sys.modules)\n"
        "missing = []\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        functools.reduce(getattr, name.split('.')[1:], keras_alexnet)\n"
        "    except AttributeError as error:\n"
        "        missing.append(f'{name}: {error}')\n"
        "assert not missing, missing\n"
    )
    result = subprocess.run([sys.executable, "-c", script, *names], cwd=ROOT,
                            capture_output=True, text=True, env={**os.environ})
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.backend_independent
def test_dir_lists_the_lazy_submodules_and_unknown_names_fail():
    listed = dir(keras_alexnet)
    for name in ("data", "presets", "training", "evaluation", "convert", "augment",
                 "export_saved_model", "AlexNet"):
        assert name in listed
    try:
        keras_alexnet.no_such_thing
    except AttributeError as error:
        assert "no_such_thing" in str(error)
    else:
        raise AssertionError("an unknown attribute must raise AttributeError")
