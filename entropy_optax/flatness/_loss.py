"""A loss function as a jit argument: its code is static, the arrays it closes over are traced.

The flatness functions jit their work once per *kind* of loss. Passing ``loss_fn`` to
``jax.jit`` as a static argument would key the compilation on the function object, so each new
closure (a loss over other BatchNorm statistics, another seed's model state, a lambda written in
a loop) would compile again, unless its author wrote ``__eq__``/``__hash__``. Instead the loss is
split here into

* a static part that keys the compilation: the function's code, its globals (by identity), and
  every closed-over or default value that is not a ``jax.Array`` (compared by value when
  hashable, by identity otherwise), and
* its ``jax.Array`` leaves: the arrays found in its closure cells, its default arguments, the
  arguments of a ``functools.partial`` / ``jax.tree_util.Partial``, the ``self`` of a bound
  method, and inside any pytree among those. They become traced arguments of the jitted code.

So two closures of the same code over different arrays of the same shapes share one compiled
program, and each call uses its own arrays. Arrays of another shape or dtype compile again, as
for any jitted argument. NumPy arrays stay static (compared by identity), so that a loss may
still call NumPy on them; convert them with ``jnp.asarray`` to share compilations. A callable
object that is not a function (a class with ``__call__``) is split only if it is a registered
pytree; otherwise it is static, compared by its own ``__eq__``/``__hash__``. A list or dict that
holds no array and no function is kept as it is (compared by identity), so a loss that appends to
a list of its own still appends to the caller's list.
"""

from __future__ import annotations

import functools
import types
from typing import Any

import jax

# A traced leaf's place in a spec.
_TRACED = ("traced",)


class _Static:
  """A static value in a spec: compared by value when hashable, by identity otherwise."""

  __slots__ = ("value", "_hash", "_by_value")

  def __init__(self, value: Any):
    self.value = value
    try:
      self._hash, self._by_value = hash((type(value), value)), True
    except TypeError:
      self._hash, self._by_value = id(value), False

  def __hash__(self) -> int:
    return self._hash

  def __eq__(self, other) -> bool:
    if not isinstance(other, _Static):
      return NotImplemented
    if self.value is other.value:
      return True
    if not (self._by_value and other._by_value) or type(self.value) is not type(other.value):
      return False
    try:
      return bool(self.value == other.value)
    except Exception:  # noqa: BLE001 - an odd __eq__ means "not known equal": compile again
      return False


class _Identity:
  """A value compared by identity (a function's globals: the module it was defined in)."""

  __slots__ = ("value",)

  def __init__(self, value: Any):
    self.value = value

  def __hash__(self) -> int:
    return id(self.value)

  def __eq__(self, other) -> bool:
    return isinstance(other, _Identity) and self.value is other.value


def _split(obj: Any, leaves: list[jax.Array], active: set[int]) -> Any:
  """The hashable spec of ``obj``; appends its traced arrays to ``leaves`` in spec order."""
  if isinstance(obj, jax.Array):
    leaves.append(obj)
    return _TRACED
  if isinstance(obj, types.FunctionType) and id(obj) not in active:
    active.add(id(obj))  # A function that closes over itself stays static on the second visit.
    try:
      cells = []
      for cell in obj.__closure__ or ():
        try:
          contents = cell.cell_contents
        except ValueError:  # An empty cell: a name assigned after the function was defined.
          cells.append(None)
        else:
          cells.append((_split(contents, leaves, active),))
      # Keyword defaults as (name, value) pairs: each new function has its own dict of them.
      kwdefaults = None if obj.__kwdefaults__ is None else tuple(obj.__kwdefaults__.items())
      return (
        "function",
        obj.__code__,
        _Identity(obj.__globals__),
        obj.__name__,
        _split(obj.__defaults__, leaves, active),
        _split(kwdefaults, leaves, active),
        tuple(cells),
      )
    finally:
      active.discard(id(obj))
  if isinstance(obj, functools.partial):  # Also jax.tree_util.Partial, a subclass.
    return (
      "partial",
      type(obj),
      _split(obj.func, leaves, active),
      _split(obj.args, leaves, active),
      _split(obj.keywords, leaves, active),
    )
  if isinstance(obj, types.MethodType):
    return ("method", _split(obj.__func__, leaves, active), _split(obj.__self__, leaves, active))
  children, treedef = jax.tree.flatten(obj)
  if jax.tree_util.treedef_is_leaf(treedef) and children and children[0] is obj:
    return ("static", _Static(obj))
  own_leaves: list[jax.Array] = []
  child_specs = tuple(_split(child, own_leaves, active) for child in children)
  if all(spec[0] == "static" for spec in child_specs):
    # Plain values only (no array, no function): keep this very object, so that a list or dict
    # the loss writes to stays the caller's, not a copy.
    return ("static", _Static(obj))
  leaves.extend(own_leaves)
  return ("tree", treedef, child_specs)


def _join(spec: Any, leaves) -> Any:
  """The object that ``spec`` describes, with its traced places filled from ``leaves``."""
  if spec is _TRACED or spec == _TRACED:
    return next(leaves)
  kind = spec[0]
  if kind == "static":
    return spec[1].value
  if kind == "tree":
    return jax.tree.unflatten(spec[1], [_join(child, leaves) for child in spec[2]])
  if kind == "function":
    _, code, globals_, name, defaults, kwdefaults, cells = spec
    defaults, kwdefaults = _join(defaults, leaves), _join(kwdefaults, leaves)
    closure = tuple(
      types.CellType() if cell is None else types.CellType(_join(cell[0], leaves)) for cell in cells
    )
    fn = types.FunctionType(code, globals_.value, name, defaults, closure or None)
    fn.__kwdefaults__ = None if kwdefaults is None else dict(kwdefaults)
    return fn
  if kind == "partial":
    _, partial_type, func, args, keywords = spec
    func, args, keywords = _join(func, leaves), _join(args, leaves), _join(keywords, leaves)
    return partial_type(func, *args, **keywords)
  if kind == "method":
    return types.MethodType(_join(spec[1], leaves), _join(spec[2], leaves))
  raise AssertionError(f"unknown spec {spec!r}")


@jax.tree_util.register_pytree_node_class
class LossTree:
  """``loss_fn`` as a pytree: traced leaves = the arrays it closes over; the rest is static.

  Calling it calls the loss, rebuilt around the (possibly traced) leaves.
  """

  def __init__(self, spec: Any, leaves: list[jax.Array]):
    self.spec, self.leaves = spec, list(leaves)
    self._fn = None

  @classmethod
  def of(cls, loss_fn) -> LossTree:
    if isinstance(loss_fn, LossTree):
      return loss_fn
    if not callable(loss_fn):
      raise TypeError(
        f"loss_fn must be callable as loss_fn(params, batch) -> scalar, got {type(loss_fn)}."
      )
    leaves: list[jax.Array] = []
    spec = _split(loss_fn, leaves, set())
    return cls(spec, leaves)

  def __call__(self, *args, **kwargs):
    if self._fn is None:
      self._fn = _join(self.spec, iter(self.leaves))
    return self._fn(*args, **kwargs)

  def tree_flatten(self):
    return self.leaves, self.spec

  @classmethod
  def tree_unflatten(cls, spec, leaves):
    return cls(spec, leaves)
