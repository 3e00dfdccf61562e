"""The tutorial notebook runs end to end (smoke-sized via DD_QUICK=1) and produces a real picture."""
import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("DD_QUICK", "1")
    monkeypatch.setenv("DD_OUT", str(tmp_path / "out"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert (tmp_path / "out" / "buffer" / "manifest.json").exists()
    assert (tmp_path / "out" / "mtt_ipc1" / "synset.safetensors").exists()
    png = (tmp_path / "out" / "mtt_ipc1" / "grid.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "random-real" in outputs and "mlp" in outputs
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
