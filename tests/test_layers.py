"""The folders of ``experiments/`` are layers: each imports only the folders below it, and no
script (a module at the top of ``experiments/``) imports another script."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent / "experiments"

# From the top down; a folder may import itself and the folders after it.
LAYERS = (
  "studies",
  "launch",
  "configs",
  "reporting",
  "optimizers",
  "trainer",
  "models",
  "data",
  "run",
)


def _imported_modules(path: pathlib.Path) -> set[str]:
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f"{node.module}.{a.name}" for a in node.names)
    elif isinstance(node, ast.Import):
      names.update(a.name for a in node.names)
  return {n for n in names if n.split(".")[0] == "experiments"}


def test_every_folder_is_a_layer():
  folders = {p.name for p in ROOT.iterdir() if p.is_dir() and p.name != "__pycache__"}
  assert folders == set(LAYERS), "a new folder of experiments/ needs its place in LAYERS"


def test_each_folder_imports_only_the_folders_below_it():
  upward = []
  for path in ROOT.glob("*/*.py"):
    folder = path.parent.name
    allowed = set(LAYERS[LAYERS.index(folder) :])
    for module in _imported_modules(path):
      parts = module.split(".")
      if len(parts) > 1 and parts[1] in LAYERS and parts[1] not in allowed:
        upward.append(f"{path.relative_to(ROOT.parent)} imports {module}")
  assert not upward, "imports that run up the layers:\n" + "\n".join(sorted(upward))


def test_no_script_imports_another_script():
  scripts = {p.stem for p in ROOT.glob("*.py") if p.stem != "__init__"}
  found = []
  for path in ROOT.rglob("*.py"):
    for module in _imported_modules(path):
      parts = module.split(".")
      if len(parts) == 2 and parts[1] in scripts and parts[1] != path.stem:
        found.append(f"{path.relative_to(ROOT.parent)} imports {module}")
  assert not found, "\n".join(found)


def test_every_script_defers_signals_before_its_slow_imports():
  """A Ctrl-C during a script's imports waits for a safe point (experiments/run/signals.py):
  each script imports ``signals`` and calls ``signals.defer_if_main(__name__)`` before any other
  import."""
  late = []
  for path in sorted(ROOT.glob("*.py")):
    if path.stem == "__init__":
      continue
    lines = [ast.unparse(n) for n in ast.parse(path.read_text()).body[1:]]  # after the docstring
    lines = [line for line in lines if line != "from __future__ import annotations"]
    if lines[:2] != ["from experiments.run import signals", "signals.defer_if_main(__name__)"]:
      late.append(str(path.relative_to(ROOT.parent)))
  assert not late, f"scripts that do not defer signals before their imports: {late}"
