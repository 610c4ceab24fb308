"""The command line: tyro on the frozen dataclasses, one-line errors, the scripts' ``main``.

Why tyro: the options come from the dataclass fields themselves (``RunConfig``'s docstrings
are the ``--help``), presets are tyro subcommands whose defaults are the preset's values, and
frozen dataclasses stay the one schema (no second one as with ml_collections' ConfigDicts,
which have no per-field help). tyro's error boxes are condensed here into one line.

    python -m experiments.cifar10 entropy-sgd --learning-rate 0.5 --workdir runs/x

``cli.main`` wraps a script's ``main(argv)``: known failures (a bad value, an unwritable or
existing run directory, nothing to resume, an absent data set, a bad checkpoint) print one
line ``error: ...`` and exit 1 (2 for a command line that does not parse), never a traceback;
a job in which a run diverged exits ``EXIT_DIVERGED`` (3) at its end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, TypeVar

import tyro

from experiments.data import datasets as data_lib
from experiments.run import checkpoints, directory
from experiments.run.schema import ConfigError, Preset, RunConfig, RunOptions

T = TypeVar("T")
EXIT_DIVERGED = 3
"""The exit code of a job that ran to its end but in which a run diverged."""


class UsageError(ValueError):
  """The command line does not parse."""


def _one_line(text: str) -> str:
  return " ".join(text.split())


def _condense(text: str) -> str:
  """tyro's error (a box on a terminal, dashed sections elsewhere) on one line, without the
  title and the pointers to --help."""
  sections: list[list[str]] = [[]]
  for line in text.splitlines():
    line = line.strip().strip("│╭╮╰╯").strip()
    if not line:
      continue
    if not line.strip("─- "):  # a separator
      sections.append([])
    elif line.startswith("─") and line.endswith("─"):  # a box's title bar
      sections.append([])
    else:
      sections[-1].append(line)
  texts = [_one_line(" ".join(s)) for s in sections if s]
  if len(texts) > 1 and ":" not in texts[0]:  # the title of the dashed format
    texts = texts[1:]
  skip = ("For full helptext", "Argument helptext", "Perhaps you meant")
  return "; ".join(t for t in texts if not t.startswith(skip)) or _one_line(text)


def parse(fn: Callable[[], T], prog: str) -> T:
  """Runs a tyro parser ``fn``; its errors become ``UsageError`` (one line, names --help)."""
  captured = io.StringIO()
  try:
    with contextlib.redirect_stderr(captured):
      return fn()
  except SystemExit as e:
    if e.code in (0, None):
      raise
    raise UsageError(f"{_condense(captured.getvalue())} (see {prog} --help)") from None


@dataclasses.dataclass(frozen=True)
class Args:
  """A run: its configuration and how it is carried out."""

  config: Annotated[RunConfig, tyro.conf.OmitArgPrefixes]
  run: Annotated[RunOptions, tyro.conf.OmitArgPrefixes] = RunOptions()


def parse_preset(
  prog: str, description: str, presets: Mapping[str, Preset], argv: Sequence[str] | None
) -> tuple[RunConfig, RunOptions, dict[str, Any]]:
  """``PRESET [--FIELD VALUE ...]``: the preset's config with the options given.

  Returns:
    ``(config, options, explicit)``: ``explicit`` holds the fields whose value differs from
    the preset's (a resumed run must have the same).
  """
  argv = list(sys.argv[1:] if argv is None else argv)

  def describe(preset: Preset) -> str:
    paper = "; ".join(f"{m} {r}" for m, r in preset.paper.items())
    return preset.description + (f". Paper (test error %, eff. epochs): {paper}" if paper else "")

  choices = {n: (describe(p), Args(p.config)) for n, p in presets.items()}
  args = parse(
    lambda: tyro.extras.overridable_config_cli(
      choices, prog=prog, description=description, args=argv
    ),
    prog,
  )
  name = next(a for a in argv if a in presets)
  base = presets[name].config
  explicit = {k: v for k, v in dataclasses.asdict(args.config).items() if v != getattr(base, k)}
  return args.config, args.run, explicit


def _known_errors() -> tuple[type[BaseException], ...]:

  return (
    ConfigError,
    directory.RunExistsError,
    directory.WorkdirError,
    data_lib.DatasetUnavailableError,
    checkpoints.CheckpointError,
  )


def main(fn: Callable[[Sequence[str] | None], int | None]) -> Callable[..., int]:
  """Wraps a script's ``main(argv)`` (see the module docstring)."""

  def wrapped(argv: Sequence[str] | None = None) -> int:
    try:
      return fn(argv) or 0
    except UsageError as e:
      print(f"error: {_one_line(str(e))}", file=sys.stderr)
      return 2
    except KeyboardInterrupt as e:  # a signal (experiments.trainer.preemption) or Ctrl-C
      print(str(e) or "interrupted: continue the run with --resume", file=sys.stderr)
      return getattr(e, "exit_code", 130)
    except Exception as e:  # pylint: disable=broad-except
      if not isinstance(e, _known_errors()):
        raise
      print(f"error: {_one_line(str(e)) or type(e).__name__}", file=sys.stderr)
      return 1

  wrapped.__doc__ = fn.__doc__
  return wrapped


def option_names(text: str) -> list[str]:
  """The ``--options`` a help or error text mentions (for tests)."""
  return re.findall(r"--[a-z0-9][a-z0-9.-]*", text)
