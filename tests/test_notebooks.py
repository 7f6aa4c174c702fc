"""The Colab notebooks run top to bottom at the tiny size (as CI would on a CPU runtime)."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

from tests.paths import ROOT

NOTEBOOKS = sorted((ROOT / "experiments" / "notebooks").glob("*.ipynb"))


def test_all_notebooks_are_collected():
    assert [p.name for p in NOTEBOOKS] == [
        "01_data_engine.ipynb",
        "02_training.ipynb",
        "03_inference_evaluation.ipynb",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("SYNCAS_NOTEBOOK_SIZE", "tiny")
    monkeypatch.setenv("SYNCAS_NOTEBOOK_DIR", str(tmp_path))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    errors = [o for cell in notebook.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    images = [o for cell in notebook.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, "every notebook shows at least one picture"
