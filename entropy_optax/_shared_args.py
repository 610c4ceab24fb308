"""The descriptions of the arguments that several optimizers share, kept in one place.

:func:`~entropy_optax.local_entropy`, :func:`~entropy_optax.entropy_sgd`,
:func:`~entropy_optax.entropy_adam` and :func:`~entropy_optax.parle` take the same Langevin-chain
arguments. Each lists them in its own ``Args`` (``help()`` and the API pages show every
argument where it is used) from the one text here: a docstring line ``.. chain-args:: a b c``
becomes the descriptions of ``a``, ``b`` and ``c``, indented as the line is. A line that stayed
unreplaced would be a reStructuredText error, so the docs build catches a misspelled name.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

CHAIN_ARGS = {
  "num_langevin_steps": (
    "L >= 1, the Langevin steps per update; each is one gradient evaluation, so an update costs "
    "L of them (see :term:`L` and :term:`effective epoch`)."
  ),
  "gamma": (
    "the scope γ > 0 (:term:`scope`): a float, a schedule of the update count t (t = 0 at the "
    "first update) such as :func:`~entropy_optax.exponential_scoping`, or "
    ":func:`~entropy_optax.auto_scoping`, a γ that sets itself from each update's diagnostics."
  ),
  "langevin_lr": "η' > 0, the step size of the Langevin (SGLD) steps.",
  "noise": (
    "ε >= 0, the thermal noise: each step adds √η' ε N(0, I), the paper's text. Both of the "
    "authors' codes add √(2η') ε N(0, I): pass ``noise * sqrt(2)`` for theirs."
  ),
  "alpha": (
    "in (0, 1], the weight of the newest sample in the running mean μ ← (1 − α) μ + α x'. The "
    "paper's text says 0.75; both of the authors' codes use 0.25."
  ),
  "langevin_momentum": (
    "momentum on the raw gradient inside the chain, its buffer zeroed at every update (both of "
    "the authors' codes: 0.9, Nesterov); the coupling and the noise are added after it."
  ),
  "scale_by_gamma": "return γ (x − μ), the exact gradient of −F, instead of x − μ.",
  "key": "the PRNG key, or an int seed, of the Langevin noise.",
  "noise_distribution": (
    'the distribution of the unit-variance noise draws: ``"irwin_hall"`` (cheap, with the '
    'exact mean and variance of a Gaussian) or ``"gaussian"``. Called ``noise_sampler`` in '
    "0.1.0 (still accepted, with a DeprecationWarning; see :doc:`/migration`)."
  ),
  "unroll": (
    "the unrolling of the chain's ``lax.scan``; None: :func:`~entropy_optax.default_unroll`."
  ),
  "sampler": (
    'the Markov chain: ``"sgld"`` (the paper\'s) or ``"sghmc"``, underdamped Langevin with '
    "``friction``, at the same temperature ε²/2 and cost (see "
    ":func:`~entropy_optax.langevin_mean`)."
  ),
  "friction": 'SGHMC\'s friction in (0, 1] (None: 0.1); only with ``sampler="sghmc"``.',
}

_LINE = re.compile(r"^( *)\.\. chain-args:: ([\w ]+)$", re.M)
_F = TypeVar("_F", bound=Callable)


def _wrap(text: str, indent: str, width: int = 96) -> str:
  words, lines, line = text.split(), [], ""
  for word in words:
    if line and len(indent) + len(line) + 1 + len(word) > width:
      lines.append(line)
      line = word
    else:
      line = f"{line} {word}" if line else word
  lines.append(line)
  return "\n".join(indent + ("" if i == 0 else "  ") + part for i, part in enumerate(lines))


def _expand(match: re.Match) -> str:
  indent = match.group(1)
  return "\n".join(_wrap(f"{name}: {CHAIN_ARGS[name]}", indent) for name in match.group(2).split())


def with_chain_args(function: _F) -> _F:
  """Replaces the ``.. chain-args::`` lines of ``function``'s docstring (see the module)."""
  function.__doc__ = _LINE.sub(_expand, function.__doc__)
  return function
