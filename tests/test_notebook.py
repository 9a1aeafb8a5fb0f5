"""notebooks/kl_weighting: the .ipynb is its .py (jupytext), it runs top to bottom, and its outputs are a real run's."""

import os
import re

import pytest

from conftest import ROOT

jupytext = pytest.importorskip("jupytext")
nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

SOURCE = os.path.join(ROOT, "notebooks", "kl_weighting.py")
NOTEBOOK = os.path.join(ROOT, "notebooks", "kl_weighting.ipynb")
TINY = ['"data.limit=300"', '"evaluation.max_examples=100"', '"evaluation.iwae_k=2"',
        '"output.per_epoch_images=false"', '"train.batch_shards=1"']


def cells(notebook):
    return [(cell.cell_type, cell.source.strip()) for cell in notebook.cells]


def test_the_ipynb_is_made_from_its_py():
    # Edit the .py, then: jupytext --update --to ipynb notebooks/kl_weighting.py (keeps the outputs), and
    # re-execute it (docs/CONTRIBUTING.md).
    assert cells(jupytext.read(SOURCE)) == cells(nbformat.read(NOTEBOOK, as_version=4))


def errors(notebook):
    return [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
            if output.output_type == "error"]


def images(notebook):
    return [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
            if "image/png" in output.get("data", {})]


def printed(notebook):
    return "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for output in cell.get("outputs", []) if output.output_type == "stream")


def test_the_committed_outputs_come_from_a_run_of_every_cell():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code) and errors(notebook) == []
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))  # Top to bottom, once.
    assert len(images(notebook)) >= 3
    text = printed(notebook)
    assert "verdict: collapsed" in text and "effective β 784" in text  # The mean's collapse, as the run found it.


def test_the_notebook_runs_top_to_bottom(tmp_path):
    notebook = jupytext.read(SOURCE)
    (parameters,) = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    parameters.source = (f'DATA = "mnist_embedded"\nEPOCHS = 1\nOUTPUT = {str(tmp_path)!r}\n'
                         f'EXTRA = [{", ".join(TINY)}]\n')
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": ROOT}},
                            allow_errors=True).execute()
    assert errors(notebook) == []
    assert len(images(notebook)) >= 3  # The grids, the latent plots and the frontier, inline.
    text = printed(notebook)
    assert "Effective β" in text  # --explain on the 2020 recipe.
    assert "absl::InitializeLog" not in text and "cuInit" not in text  # TensorFlow's C++ start-up lines stay out.
    # The two runs, then the three β and GECO.
    assert len(re.findall(r"verdict: (collapsed|partial|healthy)", text)) == 6
    assert len([name for name in os.listdir(tmp_path) if not name.endswith(".png")]) == 5  # sum, mean, β 0.5, 4, GECO.
