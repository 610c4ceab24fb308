"""The notebooks run, read as a user meets them, and their committed outputs are the current code's.

Each notebook runs in a temporary copy (the committed file is never touched) with smaller sizes:
the test injects a cell of its own after the cell tagged ``parameters`` (papermill's
convention), so the notebooks carry no test switch. The committed outputs come from the
notebooks' own parameters.

Staleness: ``tests/notebook_records.json`` holds, per notebook, the hash of the code cells that
produced the committed outputs and the printed output of the small-size run made at the same
time (compared up to the float rounding that differs between CPUs: ``same_printout``). A
notebook edited without re-running, or code whose numbers moved, fails here until
``python3 tests/test_notebooks.py`` (from the repository root: re-executes both notebooks in
place and rewrites the records, about two minutes on two cores) has been run and committed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pathlib
import re
import sys

import numpy as np
import pytest

from tests.fresh_process import FAST_COMPILE_FLAG

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
RECORDS = pathlib.Path(__file__).resolve().parent / "notebook_records.json"
NAMES = ("scoping", "quickstart", "fashion_mnist")
TIMEOUT_S = 600  # per cell
SMALL = {  # the sizes the tests run with (their parameters cell holds the full ones)
  "quickstart": {"EPOCHS": 8},
  "scoping": {
    "NUM_KEYS": 96,
    "NUM_CHECK_POINTS": 17,
    "NUM_SEEDS": 2,
    "SWEEP_SIZE": 4,
    "SWEEP_STRIDE": 2,
    "SWEEP_SEEDS": 1,
    "GRID_2D": 7,
  },
  # Small IDX files written by the test (_run_small), DATA_DIR pointing at them; the probe on
  # every training image, so that its radius-0 loss is the printed training loss.
  "fashion_mnist": {
    "NUM_TRAIN": 500,
    "NUM_TEST": 200,
    "EPOCHS": 2,
    "WIDTH": 32,
    "PROBE_EXAMPLES": 500,
  },
}


def execute(nb, workdir: pathlib.Path, parameters: dict | None = None):
  """Runs ``nb`` in place in a fresh kernel, ``parameters`` set after its parameters cell."""
  if parameters:
    (index,) = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    injected = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in parameters.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, injected)
  client = nbclient.NotebookClient(
    nb,
    timeout=TIMEOUT_S,
    kernel_name="python3",
    record_timing=False,  # no timestamps in the committed cells
    resources={"metadata": {"path": str(workdir)}},
  )
  client.execute(env=kernel_environment())  # raises CellExecutionError on the first failing cell
  return nb


def kernel_environment() -> dict[str, str]:
  """This process's environment without the suite's fast-compile flag (tests/conftest.py): the
  notebooks run as a user runs them, with XLA's default optimization level, which printed the
  committed outputs and records (float32 rounding differs between levels)."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(FAST_COMPILE_FLAG, "").strip()
  return env


def printed(nb) -> str:
  parts = []
  for cell in nb.cells:
    for out in cell.get("outputs", []):
      if out.output_type == "stream":
        parts.append(out.text)
      elif out.output_type in ("execute_result", "display_data"):
        parts.append(out.get("data", {}).get("text/plain", ""))
  return "".join(parts)


def comparable(text: str) -> str:
  """The printed output without what differs from run to run: times and library versions."""
  text = re.sub(r"^jax \d.*$", "<versions>", text, flags=re.M)
  text = re.sub(r"\d+(\.\d+)?s\b", "<seconds>", text)
  return re.sub(r"<Figure size [^>]*>", "<figure>", text)


def sources_sha256(nb) -> str:
  code = [c.source for c in nb.cells if c.cell_type == "code"]
  return hashlib.sha256("\n# -- cell --\n".join(code).encode()).hexdigest()


def images(nb) -> list[bytes]:
  return [
    base64.b64decode(out.data["image/png"])
    for cell in nb.cells
    if cell.cell_type == "code"
    for out in cell.get("outputs", [])
    if out.output_type in ("display_data", "execute_result") and "image/png" in out.get("data", {})
  ]


def _run_small(name, tmp_path):
  nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
  parameters = dict(SMALL[name])
  if name == "fashion_mnist":  # the four IDX files, random but the same at every run
    from tests.test_fashion_mnist import random_split, write_idx_directory

    rng = np.random.default_rng(0)
    train, test = (
      random_split(rng, parameters["NUM_TRAIN"]),
      random_split(rng, parameters["NUM_TEST"]),
    )
    parameters["DATA_DIR"] = str(write_idx_directory(tmp_path / "idx", train, test))
  return execute(nb, tmp_path, parameters)


# A decimal number as the notebooks print it (37.1, 0.595, 1.28e-05, -2.288).
_DECIMAL = re.compile(r"-?\d+\.\d+(?:e[-+]?\d+)?|-?\d+e[-+]?\d+")
# How far a printed decimal may move between CPUs: LLVM compiles XLA:CPU's programs for the host's
# processor, so float32 rounding differs from one CPU model to another, and a few epochs of
# training carry it to the second digit (the quickstart's 8-epoch test error: 40.0% on one AMD
# EPYC model, 40.6% on another, from the same code and packages). A change of the code that moves
# the numbers further, or changes any word or whole number, still fails.
RELATIVE_TOLERANCE = 0.05


def same_printout(text: str, record: str) -> bool:
  """Whether ``text`` is ``record`` up to float rounding: the same words and whole numbers, each
  decimal within ``RELATIVE_TOLERANCE`` of the recorded one (or within one unit of its last
  printed digit)."""
  if _DECIMAL.split(text) != _DECIMAL.split(record):
    return False
  for got, want in zip(_DECIMAL.findall(text), _DECIMAL.findall(record), strict=True):
    last_digit = 10.0 ** -len(want.split("e")[0].partition(".")[2]) if "." in want else 0.0
    a, b = float(got), float(want)
    if abs(a - b) > max(RELATIVE_TOLERANCE * max(abs(a), abs(b)), last_digit * 1.0001):
      return False
  return True


def _check_matches_record(name, nb):
  record = json.loads(RECORDS.read_text())[name]["small_run_output"]
  text = comparable(printed(nb))
  assert same_printout(text, record), (
    f"{name}: the notebook prints other numbers with the current code than when its outputs "
    "were committed (beyond the rounding that differs between CPUs): run `python3 "
    f"tests/test_notebooks.py` and commit the notebooks.\nprinted:\n{text}\nrecorded:\n{record}"
  )


def test_printouts_compare_up_to_rounding():
  record = "SGD 37.1% (best 37.1% at epoch 8); loss 0.595; ratio 1.28e-05; 64 updates x 5"
  assert same_printout(record, record)
  assert same_printout(record.replace("37.1%", "38.0%").replace("0.595", "0.589"), record)
  assert same_printout(record.replace("1.28e-05", "1.31e-05"), record)
  assert not same_printout(record.replace("37.1%", "45.0%"), record)  # moved beyond rounding
  assert not same_printout(record.replace("64 updates", "65 updates"), record)  # a count
  assert not same_printout(record.replace("SGD", "Adam"), record)  # a word
  assert not same_printout(record + " 0.1", record)  # one number more
  assert same_printout("cosine 0.01", "cosine 0.02")  # one unit of the last digit
  assert not same_printout("cosine 0.01", "cosine 0.03")


@pytest.mark.slow
def test_scoping_notebook_runs(tmp_path):
  nb = _run_small("scoping", tmp_path)
  text = printed(nb)
  # The Langevin estimate of -grad F must match the quadrature.
  error = float(re.search(r"langevin_vs_quadrature max relative error: ([0-9.]+)", text).group(1))
  assert error < 0.2, error  # 96 chains: 1.6x the full run's statistical error
  # Exponential scoping sends the runs from SGD's sharp basin to the wide valley.
  row = re.search(r"^exponential\s+\d+\s+\d+\s+(\d+)%\s+(\d+)%", text, re.M)
  assert row is not None, text
  assert int(row.group(2)) >= 75, row.group(0)
  assert len(images(nb)) >= 6
  _check_matches_record("scoping", nb)


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path):
  nb = _run_small("quickstart", tmp_path)
  text = printed(nb)
  found = re.findall(r"test error after (\d+) effective epochs: ([0-9.]+)%", text)
  assert len(found) == 2 and all(int(epochs) == 8 for epochs, _ in found), text
  errors = [float(error) for _, error in found]
  assert all(e < 60.0 for e in errors), errors  # 10 classes: chance is 90%
  assert len(images(nb)) >= 1
  _check_matches_record("quickstart", nb)


@pytest.mark.slow
def test_fashion_mnist_notebook_runs(tmp_path):
  nb = _run_small("fashion_mnist", tmp_path)
  text = printed(nb)
  assert "from the IDX files: train (500, 784), test (200, 784)" in text, text
  finals = dict(
    re.findall(r"^(SGD|Entropy-SGD, .+?)\s+test error after 2 .*?train loss ([0-9.]+);", text, re.M)
  )
  assert len(finals) == 5, text
  # The probe's radius-0 column is the loss at the final point on the same 500 images.
  probes = dict(re.findall(r"^(SGD|Entropy-SGD, .+?)\s{2,}([0-9.]+)\s", text, re.M))
  for name, loss in finals.items():
    assert abs(float(probes[name]) - float(loss)) <= 1.5e-3, (name, probes[name], loss)
  assert len(re.findall(r"ratio [0-9.e-]+ over the first 2 updates", text)) == 4, text
  assert len(images(nb)) == 3
  _check_matches_record("fashion_mnist", nb)


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_reads_well_and_is_current(name):
  path = NOTEBOOKS / f"{name}.ipynb"
  nb = nbformat.read(path, as_version=4)
  # A title first, then the cell that installs what is missing: the package from the clone the
  # notebook is in (there is no release to name, and no repository address to open it from).
  first, install = nb.cells[0], nb.cells[1]
  assert first.cell_type == "markdown" and first.source.startswith("# "), first.source[:80]
  assert "colab" not in first.source.lower() and "github.com" not in install.source
  assert install.cell_type == "code" and "%pip install" in install.source
  assert "CLONE = pathlib.Path.cwd().parent" in install.source
  assert "find_spec" in install.source  # only what is missing
  # No test plumbing in what a reader sees.
  code = [c for c in nb.cells if c.cell_type == "code"]
  for cell in code:
    assert "ENTROPY_OPTAX" not in cell.source and "FAST" not in cell.source
    assert not re.search(r"^\s*assert\b", cell.source, re.M), cell.source[:200]
  assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1
  # Outputs committed, from the committed sources.
  assert all(c.execution_count for c in code), f"{name}: not every code cell was executed"
  assert not any(o.output_type == "error" for c in code for o in c.get("outputs", [])), name
  pictures = images(nb)
  assert pictures and all(img.startswith(b"\x89PNG") for img in pictures), name
  assert path.stat().st_size < 1_500_000, path.stat().st_size
  assert sources_sha256(nb) == json.loads(RECORDS.read_text())[name]["sources_sha256"], (
    f"{name}: its code changed since its outputs were made: run `python3 "
    "tests/test_notebooks.py` and commit the notebooks"
  )


def refresh(names=NAMES) -> None:
  """Re-executes each notebook in place at its own sizes and records the small-size run."""
  import tempfile

  records = json.loads(RECORDS.read_text()) if RECORDS.exists() else {}
  for name in names:
    path = NOTEBOOKS / f"{name}.ipynb"
    with tempfile.TemporaryDirectory() as workdir:
      nb = execute(nbformat.read(path, as_version=4), pathlib.Path(workdir))
      nbformat.write(nb, path)
      small = _run_small(name, pathlib.Path(workdir))
    records[name] = {
      "sources_sha256": sources_sha256(nb),
      "small_run_output": comparable(printed(small)),
    }
    RECORDS.write_text(json.dumps(records, indent=2, sort_keys=True) + "\n")
    print(f"{path.relative_to(REPO)}: executed; record written to {RECORDS.relative_to(REPO)}")


if __name__ == "__main__":
  refresh(sys.argv[1:] or NAMES)
