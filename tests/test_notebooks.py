"""Executes the notebooks top to bottom, in their fast mode, on the current backend."""

from pathlib import Path

import keras
import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# What notebooks/03_seeing_inside.ipynb saves with KERAS_ALEXNET_NOTEBOOK_FIGURES.
FIGURES = ("kernels.png", "kernels_learned.png", "kernels_zfnet.png", "predictions.png",
           "occlusion.png", "deconvnet.png", "patches.png", "layer_probe.png")


def test_notebooks_exist():
    assert [path.name for path in NOTEBOOKS] == ["01_quickstart.ipynb",
                                                 "02_inside_alexnet.ipynb",
                                                 "03_seeing_inside.ipynb"]


# Documentation, run once: the library calls the notebooks make are tested on
# every backend by the other test files.
@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="the notebooks are executed on TensorFlow")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    committed = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") for cell in committed.cells if cell.cell_type == "code"), \
        "commit notebooks without outputs"
    monkeypatch.setenv("KERAS_ALEXNET_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("KERAS_BACKEND", keras.backend.backend())
    figures = tmp_path / "figures"
    figures.mkdir()
    monkeypatch.setenv("KERAS_ALEXNET_NOTEBOOK_FIGURES", str(figures))
    client = NotebookClient(committed, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError naming the failing cell
    if path.stem == "01_quickstart":
        assert (tmp_path / "runs" / "notebook" / "export" / "1" / "saved_model.pb").exists()
    if path.stem == "03_seeing_inside":
        check_figures(figures)


def check_figures(figures):
    """The figures KERAS_ALEXNET_NOTEBOOK_FIGURES asked for: all written, none a blank
    canvas, and each shown in the "Seeing inside" guide (docs/seeing-inside.md)."""
    from PIL import Image

    assert sorted(figure.name for figure in figures.iterdir()) == sorted(FIGURES)
    guide = (ROOT / "docs" / "seeing-inside.md").read_text()
    for name in FIGURES:
        pixels = np.asarray(Image.open(figures / name).convert("L"), "float64")
        assert pixels.std() > 10, name
        assert f"]({name})" in guide and (ROOT / "docs" / name).exists(), name
