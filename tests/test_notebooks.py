"""Executes the notebooks top to bottom, in their fast mode, on the current backend."""

import os
from pathlib import Path

import keras
import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_notebooks_exist():
    assert [path.name for path in NOTEBOOKS] == ["01_quickstart.ipynb",
                                                 "02_inside_alexnet.ipynb"]


@pytest.mark.skipif(keras.backend.backend() == "torch",
                    reason="the notebooks are executed on TensorFlow and JAX")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    committed = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") for cell in committed.cells if cell.cell_type == "code"), \
        "commit notebooks without outputs"
    monkeypatch.setenv("KERAS_ALEXNET_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("KERAS_BACKEND", keras.backend.backend())
    client = NotebookClient(committed, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError naming the failing cell
    if path.stem == "01_quickstart":
        assert (tmp_path / "runs" / "notebook" / "export" / "1" / "saved_model.pb").exists()
