"""The API reference as a user reads it: every public callable documents each of its
parameters in its ``Args`` (or ``Attributes``), every public function has an example, names of
public objects are cross-references (roles), not plain literals, and summaries are whole
sentences.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import pytest

import entropy_optax
import entropy_optax.flatness
import entropy_optax.flax

PUBLIC_MODULES = (entropy_optax, entropy_optax.flax, entropy_optax.flatness)


def _public() -> dict[str, object]:
  """'module.name' -> object, for every name in the public modules' ``__all__``."""
  return {
    f"{module.__name__}.{name}": getattr(module, name)
    for module in PUBLIC_MODULES
    for name in module.__all__
  }


PUBLIC = _public()
CALLABLES = {
  name: obj
  for name, obj in PUBLIC.items()
  if (inspect.isfunction(obj) or inspect.isclass(obj)) and not inspect.ismodule(obj)
}
# NamedTuples are states and results the library returns: no example of building one by hand.
FUNCTIONS = {name: obj for name, obj in CALLABLES.items() if inspect.isfunction(obj)}
EXAMPLED_CLASSES = {
  name: obj
  for name, obj in CALLABLES.items()
  if inspect.isclass(obj) and not issubclass(obj, tuple)
}


def documented_names(doc: str) -> set[str]:
  """The names an ``Args:``/``Attributes:`` section of a Google-style docstring describes."""
  names = set()
  doc = inspect.cleandoc(doc or "")
  for section in re.findall(r"^(?:Args|Attributes):\n(.*?)(?=^\S|\Z)", doc, re.S | re.M):
    names.update(re.findall(r"^  (?:\*{0,2})(\w+)(?: \([^)]*\))?:", section, re.M))
  return names


def parameters(obj) -> list[str]:
  if inspect.isclass(obj) and issubclass(obj, tuple):  # a NamedTuple: its fields
    return list(obj._fields)
  if inspect.isclass(obj) and hasattr(obj, "__dataclass_fields__"):  # TrainState, AutoScoping
    return [n for n, f in obj.__dataclass_fields__.items() if f.init]
  names = list(inspect.signature(obj).parameters)
  return [n for n in names if n != "self"]


@pytest.mark.parametrize("name", sorted(CALLABLES))
def test_every_parameter_is_documented(name):
  obj = CALLABLES[name]
  missing = [p for p in parameters(obj) if p not in documented_names(obj.__doc__)]
  assert not missing, f"{name}: add these to its docstring's Args: {missing}"


@pytest.mark.parametrize("name", sorted(FUNCTIONS | EXAMPLED_CLASSES))
def test_every_public_function_has_an_example(name):
  doc = CALLABLES[name].__doc__ or ""
  assert re.search(r"^\s*Examples?:\n(.|\n)*>>> ", doc, re.M), f"{name}: add an Examples section"


def _docstrings():
  """(where, docstring) of every module, class, function and method of the package."""
  seen = set()
  modules = [entropy_optax]
  for info in pkgutil.walk_packages(entropy_optax.__path__, prefix="entropy_optax."):
    modules.append(importlib.import_module(info.name))
  for module in modules:
    yield module.__name__, module.__doc__ or ""
    for attr, obj in vars(module).items():
      if getattr(obj, "__module__", None) != module.__name__ or id(obj) in seen:
        continue
      if not (inspect.isfunction(obj) or inspect.isclass(obj)):
        continue
      seen.add(id(obj))
      yield f"{module.__name__}.{attr}", obj.__doc__ or ""
      if inspect.isclass(obj):
        for member, value in vars(obj).items():
          if inspect.isfunction(value) or isinstance(value, (classmethod, property)):
            fn = getattr(value, "__func__", None) or getattr(value, "fget", None) or value
            yield f"{module.__name__}.{attr}.{member}", fn.__doc__ or ""


def _public_spellings() -> set[str]:
  """How a plain literal could name a public object: ``name``, ``module.name``, and with the
  ``entropy_optax.`` prefix dropped or kept."""
  spellings = set()
  for full in PUBLIC:
    parts = full.split(".")
    spellings.update(".".join(parts[i:]) for i in range(len(parts)))
  return spellings - {"flax", "flatness"}  # the extras' names, not only the modules


def test_public_names_are_cross_references():
  """A docstring names a public object with a role (:func:, :class:, :mod:, ...), which Sphinx
  links and checks (``-n``); a plain ``literal`` of the name is neither."""
  spellings = _public_spellings()
  found = [
    f"{where}: ``{literal}``"
    for where, doc in _docstrings()
    for literal in re.findall(r"(?<![:`])``([\w.]+)(?:\(\))?``", doc)
    if literal in spellings
  ]
  assert not found, "write these as roles, e.g. :func:`~entropy_optax.local_entropy`:\n" + (
    "\n".join(found)
  )


@pytest.mark.parametrize("name", sorted(CALLABLES))
def test_summaries_are_whole_sentences(name):
  """The API index shows a docstring's first sentence, cut at the first '. ': so the first
  paragraph must not hold an abbreviation such as "Sec. 4" or "e.g. x"."""
  doc = inspect.cleandoc(CALLABLES[name].__doc__ or "")
  first = " ".join(doc.split("\n\n")[0].split())
  assert first.endswith("."), f"{name}: {first!r}"
  assert ". " not in first, f"{name}: the API index would cut {first!r} at its first '. '"
