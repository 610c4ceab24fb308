"""The wheel and the sdist hold what they should, build and install without warnings.

Built offline from a copy of the working tree (``python -m build --no-isolation``: the build
backend comes from the environment, as pyproject's ``build-system`` asks), so the tree itself
gets no ``build/`` or ``*.egg-info``.
"""

from __future__ import annotations

import email
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

# Runs of the harness end to end: CI runs them, `pytest -m "not slow"` leaves them out.
pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = REPO / "entropy_optax"
# setuptools' and pip's warnings (not a file name such as _deprecation.py).
WARNING = re.compile(
  r"DeprecationWarning|SetuptoolsWarning|\bdeprecated\b|no longer be supported|DEPRECATION"
)


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
  """(wheel path, sdist path, the build's output)."""
  pytest.importorskip("build")
  root = tmp_path_factory.mktemp("build")
  tree = root / "tree"
  shutil.copytree(
    REPO,
    tree,
    ignore=shutil.ignore_patterns(
      ".git", "runs", "build", "_build", "*.egg-info", "__pycache__", ".pytest_cache"
    ),
  )
  out = root / "dist"
  proc = subprocess.run(
    [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(tree)],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  (wheel,) = out.glob("*.whl")
  (sdist,) = out.glob("*.tar.gz")
  return wheel, sdist, proc.stdout + proc.stderr


def _package_files() -> set[str]:
  return {
    str(p.relative_to(REPO))
    for p in PACKAGE.rglob("*")
    if p.is_file() and "__pycache__" not in p.parts
  }


def test_build_prints_no_deprecation_warning(dists):
  _, _, log = dists
  assert not [line for line in log.splitlines() if WARNING.search(line)], log


def test_wheel_holds_the_package_its_marker_and_the_license_only(dists):
  wheel, _, _ = dists
  names = set(zipfile.ZipFile(wheel).namelist())
  info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
  assert "entropy_optax/py.typed" in names
  assert {n for n in names if not n.startswith(info)} == _package_files()
  assert {n.removeprefix(info + "/") for n in names if n.startswith(info)} == {
    "METADATA",
    "WHEEL",
    "RECORD",
    "top_level.txt",
    "licenses/LICENSE",
  }


def test_wheel_metadata(dists):
  wheel, _, _ = dists
  with zipfile.ZipFile(wheel) as zf:
    name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
    meta = email.message_from_bytes(zf.read(name))
  assert meta["License-Expression"] == "Apache-2.0"
  assert meta["License-File"] == "LICENSE"
  assert "Typing :: Typed" in meta.get_all("Classifier")
  # No public home yet: no address that would lead nowhere (a release adds its URLs).
  assert meta.get_all("Project-URL") is None
  # What the package imports, nothing else; extras only for code that ships.
  base = {
    re.split(r"[<>=!;\[ ]", r)[0] for r in meta.get_all("Requires-Dist") if "extra ==" not in r
  }
  assert base == {"jax", "optax", "numpy"}
  assert set(meta.get_all("Provides-Extra")) == {"flax", "flatness"}


def test_sdist_holds_what_builds_the_wheel_and_no_tests(dists):
  _, sdist, _ = dists
  with tarfile.open(sdist) as tf:
    names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
  top = {n.split("/")[0] for n in names}
  assert top == {
    "LICENSE",
    "MANIFEST.in",
    "PKG-INFO",
    "README.md",
    "pyproject.toml",
    "setup.cfg",
    "entropy_optax",
    "entropy_optax.egg-info",
  }
  assert {n for n in names if n.startswith("entropy_optax/") and "." in n} == _package_files()


def test_wheel_installs_without_warnings(dists, tmp_path):
  wheel, _, _ = dists
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "pip",
      "install",
      "--no-deps",
      "--no-index",
      "--root-user-action=ignore",
      "--disable-pip-version-check",
      "--target",
      str(tmp_path / "site"),
      str(wheel),
    ],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 0, proc.stderr
  assert not WARNING.search(proc.stdout + proc.stderr), proc.stdout + proc.stderr
  assert (tmp_path / "site" / "entropy_optax" / "py.typed").exists()


def test_readme_links_lead_somewhere():
  """README.md is read in a clone, on a code host and in the sdist: each link to a page of the
  repository is relative and names a file that exists, each link has text (no MyST-only
  ``[](page.md)``), and no link names an address that does not exist."""
  readme = (REPO / "README.md").read_text()
  links = re.findall(r"\[([^\]]*)\]\(([^)\s]+)\)", readme)  # inline links and images
  links += re.findall(r"^\[([^\]]+)\]:\s*(\S+)", readme, re.M)  # reference definitions
  assert len(links) >= 10
  assert not [target for text, target in links if not text.strip()]
  relative = [t.split("#")[0] for _, t in links if not re.match(r"https?://|#", t)]
  assert relative and not [t for t in relative if not (REPO / t).is_file()]
  assert "entropy-optax/" not in readme  # the organisation that was never created
