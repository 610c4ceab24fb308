"""How far the Langevin ``lax.scan`` is unrolled by default: a rule for XLA:CPU's convolutions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

MAX_CPU_UNROLL = 32


def _jaxpr_convolves(jaxpr: Any) -> bool:
  """Whether a jaxpr, or any jaxpr nested in it (pjit, scan, cond, custom_vjp...), convolves."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "conv_general_dilated":
      return True
    for param in eqn.params.values():
      inner = param if isinstance(param, (list, tuple)) else (param,)
      for sub in inner:
        sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
        if hasattr(sub, "eqns") and _jaxpr_convolves(sub):
          return True
  return False


def has_convolution(fn: Callable[[], Any]) -> bool:
  """Whether ``fn()`` convolves: traced to a jaxpr, never run."""
  return _jaxpr_convolves(jax.make_jaxpr(fn)().jaxpr)


def convolves_on_cpu(fn: Callable[[], Any]) -> bool:
  """Whether the default backend is XLA:CPU and ``fn()`` convolves: then a loop around ``fn``
  runs it several times slower than a loop-free program (see
  :func:`~entropy_optax.default_unroll`). The backend is checked first, so ``fn`` is traced
  only on CPU."""
  return jax.default_backend() == "cpu" and has_convolution(fn)


def default_unroll(num_steps: int, fn: Callable[[], Any]) -> int:
  """The ``unroll`` of a ``lax.scan`` of ``num_steps`` steps that each call ``fn``: unrolled on
  XLA:CPU when ``fn()`` convolves (up to ``MAX_CPU_UNROLL`` = 32 steps), else 1 (rolled).

  The Langevin chain's default (``unroll=None``); a training loop of its own that scans over
  steps can follow the same rule.

  Measured on the 2-core CPU: a conv net inside a rolled ``lax.scan`` ran 4-17x slower than
  unrolled (the loop body misses the CPU runtime's fast convolution paths), while a dense MLP
  ran 1.5x faster rolled and compiled 4-10x faster. On GPU/TPU a rolled loop costs ~nothing per
  iteration and keeps compile time independent of L. The cap bounds compile time for long
  chains. The backend is checked first, so ``fn`` (a gradient of the model) is traced only on
  CPU.

  Args:
    num_steps: the steps of the scan.
    fn: a function of no arguments that computes one step's work (e.g. a gradient of the model),
      traced to a jaxpr, never run.

  Returns:
    The ``unroll`` argument of ``jax.lax.scan``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import entropy_optax
    >>> entropy_optax.default_unroll(20, lambda: jnp.sum(jnp.ones(3) ** 2))  # no convolution
    1
  """
  if not convolves_on_cpu(fn):
    return 1
  return min(num_steps, MAX_CPU_UNROLL)
