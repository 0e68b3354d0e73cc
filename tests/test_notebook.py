# SPDX-License-Identifier: Apache-2.0
"""notebooks/quickstart.ipynb: saved without outputs, and it runs end to end at a tiny size."""

import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
PARAMETERS = ("IMAGE_SIZE", "EPOCHS", "N_TRAIN", "N_TEST_GOOD", "N_TEST_DEFECT", "BATCH_SIZE", "DEPTHS", "SEED")


def parameter_cell(nb):
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    assert cells[0] is next(c for c in nb.cells if c.cell_type == "code"), "parameters must be the first code cell"
    return cells[0]


def set_parameters(cell, **values):
    """Replace ``NAME = ...`` lines of the parameter cell; every name must be there."""
    for name, value in values.items():
        cell.source, n = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", cell.source, flags=re.MULTILINE)
        assert n == 1, f"parameter {name} not found in the parameter cell"


def test_notebook_is_saved_clean():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], "strip the outputs before saving the notebook"
            assert cell.execution_count is None
    source = parameter_cell(nb).source
    for name in (*PARAMETERS, "DATA_ROOT", "OUT"):
        assert re.search(rf"^{name} = ", source, flags=re.MULTILINE), name


@pytest.mark.slow
def test_notebook_runs_at_tiny_size(tmp_path):
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    set_parameters(
        parameter_cell(nb),
        IMAGE_SIZE=64,
        EPOCHS=1,
        N_TRAIN=6,
        N_TEST_GOOD=2,
        N_TEST_DEFECT=5,
        BATCH_SIZE=6,
        DEPTHS=(1, 1, 1, 1),
        DATA_ROOT=str(tmp_path / "data"),
        OUT=str(tmp_path / "out"),
    )
    client = NotebookClient(nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    pictures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pictures) >= 2, "the data preview and the anomaly-map grid are shown inline"
    tables = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert any("| **mean** |" in t for t in tables), "the per-category table with its mean row is shown"
    parity = [o["data"]["text/plain"] for o in outputs if "max_abs_diff_map" in o.get("data", {}).get("text/plain", "")]
    assert parity and "'passed': True" in parity[0]
    assert (tmp_path / "out" / "export" / "weights" / "openvino" / "model.xml").is_file()
    assert (tmp_path / "out" / "grid.png").is_file()
