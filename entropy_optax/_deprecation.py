"""Keywords renamed after entropy_optax 0.1.0: the old ones keep working, with a warning.

``docs/migration.md`` lists every renamed keyword; ``RENAMED`` is that list as data.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

from entropy_optax._utils import is_static_zero

# Old keyword -> new keyword, the same in every function that takes it.
RENAMED = {"nesterov": "langevin_nesterov", "noise_sampler": "noise_distribution"}


class RenamedKeywordWarning(DeprecationWarning):
  """A call that relies on a keyword or meaning of entropy_optax 0.1.0 (``docs/migration.md``).

  Its own class so that a test suite can turn the library's deprecations into errors without
  touching those of jax, optax or flax (``pyproject.toml``'s ``filterwarnings``).
  """


def renamed_keywords(*old_names: str) -> Callable[[Callable], Callable]:
  """Makes a function accept each old keyword in ``old_names`` as its new name (``RENAMED``).

  A call with the old keyword warns once (a ``DeprecationWarning`` naming the new one) and runs
  as with the new keyword; both at once is a TypeError. The function's signature, which
  ``inspect``, ``optax.inject_hyperparams`` and the docs read, shows the new names only.
  """

  def decorate(function: Callable) -> Callable:
    @functools.wraps(function)
    def with_old_keywords(*args: Any, **kwargs: Any) -> Any:
      for old in old_names:
        if old not in kwargs:
          continue
        new = RENAMED[old]
        if new in kwargs:
          raise TypeError(
            f"{function.__name__} got {old}= and {new}=; {old} is the old name of {new}: "
            f"pass {new} only."
          )
        warnings.warn(
          f"{function.__name__}'s keyword {old} is renamed {new} (see docs/migration.md); "
          f"{old}= will be removed in a later release.",
          RenamedKeywordWarning,
          stacklevel=2,
        )
        kwargs[new] = kwargs.pop(old)
      return function(*args, **kwargs)

    return with_old_keywords

  return decorate


def entropy_sgd_langevin_nesterov(
  nesterov: bool, langevin_nesterov: bool | None, langevin_momentum: Any
) -> bool:
  """entropy_sgd's Langevin momentum form: ``langevin_nesterov``, or ``nesterov`` if None.

  In entropy_optax 0.1.0 :func:`~entropy_optax.entropy_sgd`'s ``nesterov`` set both loops;
  ``langevin_nesterov`` now sets the Langevin loop's. Left unset it still follows ``nesterov``, so
  no result changes, and warns where that matters: ``nesterov=False`` with a Langevin momentum.
  """
  if langevin_nesterov is not None:
    return langevin_nesterov
  if not nesterov and not is_static_zero(langevin_momentum):
    warnings.warn(
      "entropy_sgd(nesterov=False) also makes the Langevin momentum heavy-ball, as in "
      "entropy_optax 0.1.0; nesterov will set the outer SGD only. Pass langevin_nesterov=False "
      "to keep this chain (or langevin_nesterov=True for Nesterov); see docs/migration.md.",
      RenamedKeywordWarning,
      stacklevel=3,
    )
  return nesterov
