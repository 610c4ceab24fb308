"""Executes the notebooks, so that a broken notebook fails CI, and checks their committed outputs.

Each notebook runs in a temporary copy (the committed file is never touched) with
ENTROPY_OPTAX_FAST=1, which shrinks the sample sizes and epochs; the committed outputs come from the
full settings. Together they take about a minute of CPU time.
"""

from __future__ import annotations

import base64
import pathlib
import re
import shutil

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ("scoping", "quickstart")
TIMEOUT_S = 600  # per cell


def _execute(
  name: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> nbformat.NotebookNode:
  copy = tmp_path / f"{name}.ipynb"
  shutil.copy(NOTEBOOKS / f"{name}.ipynb", copy)
  nb = nbformat.read(copy, as_version=4)
  monkeypatch.setenv("ENTROPY_OPTAX_FAST", "1")  # the kernel inherits the environment
  client = nbclient.NotebookClient(
    nb, timeout=TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
  )
  client.execute()  # raises CellExecutionError on the first failing cell
  assert "FAST = True" in _text(nb), "the notebook did not pick up ENTROPY_OPTAX_FAST"
  return nb


def _text(nb: nbformat.NotebookNode) -> str:
  parts = []
  for cell in nb.cells:
    for out in cell.get("outputs", []):
      if out.output_type == "stream":
        parts.append(out.text)
      elif out.output_type in ("execute_result", "display_data"):
        parts.append(out.get("data", {}).get("text/plain", ""))
  return "".join(parts)


def _images(nb: nbformat.NotebookNode) -> list[bytes]:
  return [
    base64.b64decode(out.data["image/png"])
    for cell in nb.cells
    if cell.cell_type == "code"
    for out in cell.get("outputs", [])
    if out.output_type in ("display_data", "execute_result") and "image/png" in out.get("data", {})
  ]


@pytest.mark.slow
def test_scoping_notebook_runs(tmp_path, monkeypatch):
  nb = _execute("scoping", tmp_path, monkeypatch)
  text = _text(nb)
  # The Langevin estimate of -grad F must match the quadrature (the notebook also asserts it).
  error = float(re.search(r"langevin_vs_quadrature max relative error: ([0-9.]+)", text).group(1))
  assert error < 0.2, error  # 96 chains in FAST mode: 1.6x the full run's statistical error
  # Exponential scoping sends the runs from SGD's sharp basin to the wide valley.
  row = re.search(r"^exponential\s+\d+\s+\d+\s+(\d+)%\s+(\d+)%", text, re.M)
  assert row is not None, text
  assert int(row.group(2)) >= 75, row.group(0)
  assert len(_images(nb)) >= 6


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
  nb = _execute("quickstart", tmp_path, monkeypatch)
  text = _text(nb)
  errors = [
    float(e) for e in re.findall(r"test error after \d+ effective epochs: ([0-9.]+)%", text)
  ]
  assert len(errors) == 2, text
  assert all(e < 60.0 for e in errors), errors  # 10 classes: chance is 90%
  assert len(_images(nb)) >= 1


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_has_outputs(name):
  path = NOTEBOOKS / f"{name}.ipynb"
  nb = nbformat.read(path, as_version=4)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(c.execution_count for c in code), f"{name}: not every code cell was executed"
  assert not any(o.output_type == "error" for c in code for o in c.get("outputs", [])), name
  images = _images(nb)
  assert images and all(img.startswith(b"\x89PNG") for img in images), name
  assert "FAST = False" in _text(nb), (
    f"{name}: the committed outputs must come from the full settings"
  )
  assert path.stat().st_size < 1_500_000, path.stat().st_size
  # The Colab cell installs only inside Colab.
  assert '"google.colab" in sys.modules' in "".join(code[0].source)
