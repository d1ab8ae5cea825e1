"""notebooks/quickstart.ipynb executes offline, top to bottom, and shows its grid and its plot."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs_and_shows_its_figures(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code), "outputs must be stripped"
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    images = [cell for cell in code if any("image/png" in out.get("data", {}) for out in cell.outputs)]
    assert len(images) == 3  # the matplotlib pair, the `apg compare` grid, the saturation plot
    printed = "".join(out.get("text", "") for cell in code for out in cell.outputs if out.output_type == "stream")
    written = [line.removeprefix("wrote ") for line in printed.splitlines() if line.startswith("wrote ")]
    assert len(written) == 1 and Path(written[0]).is_file(), printed
    assert not list(tmp_path.iterdir()), "the notebook writes nothing into its own folder"
    printed = "".join(out.get("text", "") for out in code[-1].outputs if out.output_type == "stream")
    assert all(name in printed for name in ("CFG w=1", "APG w=1", "momentum CFG w=1")), printed
