"""Every docstring example of the entropy_optax package runs and prints what it shows.

Modules are found with ``pkgutil.walk_packages``, so a module added later is checked without
editing this file. One test per docstring that has examples, named by its object.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import matplotlib
import pytest

import entropy_optax

matplotlib.use("Agg")  # plot_spectrum's example draws; no screen here.

_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _modules():
  yield entropy_optax
  for info in pkgutil.walk_packages(entropy_optax.__path__, prefix="entropy_optax."):
    yield importlib.import_module(info.name)


def _examples() -> list[doctest.DocTest]:
  finder = doctest.DocTestFinder(exclude_empty=True)
  tests = {}
  for module in _modules():
    for test in finder.find(module):
      if test.examples:
        tests.setdefault(test.name, test)  # a re-exported object is found from each module
  return sorted(tests.values(), key=lambda test: test.name)


EXAMPLES = _examples()


def test_examples_are_found_in_every_layer():
  """Discovery works: the core, the Flax adapters and flatness each have examples."""
  names = [test.name for test in EXAMPLES]
  for prefix in ("entropy_optax._", "entropy_optax.flatness.", "entropy_optax.flax."):
    assert any(name.startswith(prefix) for name in names), prefix


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda test: test.name)
def test_docstring_example(example):
  report: list[str] = []
  runner = doctest.DocTestRunner(optionflags=_FLAGS)
  result = runner.run(example, out=report.append)
  assert result.failed == 0, f"{example.name} ({example.filename}):\n{''.join(report)}"
  assert result.attempted > 0
