"""The command line: tyro on the frozen dataclasses, one-line errors, the scripts' ``main``.

Why tyro: the options come from the dataclass fields themselves (``RunConfig``'s docstrings
are the ``--help``), presets are tyro subcommands whose defaults are the preset's values, and
frozen dataclasses stay the one schema (no second one as with ml_collections' ConfigDicts,
which have no per-field help). tyro's error boxes are condensed here into one line.

    python -m experiments.cifar10 entropy-sgd --learning-rate 0.5 --workdir runs/x

``cli.main`` wraps a script's ``main(argv)``: known failures (a bad value, an unwritable or
existing run directory, nothing to resume, an absent data set, a bad checkpoint) print one
line ``error: ...`` and exit 1 (2 for a command line that does not parse), never a traceback
(with several processes: also a lost process, ``experiments.run.processes``);
a job in which a run diverged exits ``EXIT_DIVERGED`` (3) at its end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, TypeVar

import tyro

from experiments.data import datasets as data_lib
from experiments.run import checkpoints, directory, grid_job, processes, signals
from experiments.run.run_options import RunOptions
from experiments.run.schema import ConfigError, Preset, RunConfig

T = TypeVar("T")
EXIT_DIVERGED = 3
"""The exit code of a job that ran to its end but in which a run diverged."""


class UsageError(ValueError):
  """The command line does not parse."""


def _one_line(text: str) -> str:
  return " ".join(text.split())


_BOX = "│╭╮╰╯─"


def _sections(text: str) -> tuple[str | None, list[list[str]]]:
  """tyro's error (a box, or dashed sections) as (title, sections of lines), frames dropped."""
  title = None
  sections: list[list[str]] = [[]]
  for raw in text.splitlines():
    line = raw.strip()
    if line.startswith("╭"):  # a box's title bar: ╭─ Title ───╮
      title = line.strip(_BOX + " ") or None
      continue
    line = line.strip("│╭╮╰╯") if line.startswith("│") else line
    if not line.strip().strip("─- "):  # a separator, a box's bottom, a blank line
      if sections[-1]:
        sections.append([])
    else:
      sections[-1].append(line)
  return title, [s for s in sections if s]


def _condense(text: str) -> str:
  """tyro's error on one line, without its frame and its pointers to --help; its "Perhaps
  you meant" suggestions kept as the option names it suggests."""
  title, sections = _sections(text)
  if title is None and len(sections) > 1 and len(sections[0]) == 1 and ":" not in sections[0][0]:
    title, sections = sections[0][0].strip(), sections[1:]  # the dashed format's title line
  parts, suggestions = [], []
  for section in sections:
    head = section[0].strip()
    if head.startswith(("For full helptext", "Argument helptext")):
      continue
    if head.startswith("Perhaps you meant"):
      suggestions += [
        name for line in section[1:] if (name := line.strip().split(" ")[0]).startswith("-")
      ]
      continue
    parts.append(_one_line(" ".join(section)))
  message = "; ".join(parts)
  if title and ":" not in message.split(".")[0]:  # the message does not name the problem
    message = f"{title}: {message}" if message else title
  if suggestions:
    message += f"; perhaps you meant {' or '.join(dict.fromkeys(suggestions))}"
  message = message or _one_line(text)
  return "".join(c for c in message if c not in _BOX).strip()


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


@dataclasses.dataclass(frozen=True)
class _GridJobHelp(grid_job.GridJob):
  """``GridJob`` as ``--help`` shows it: the shared settings, not every recipe's fields."""

  recipe: Annotated[dict[str, RunConfig], tyro.conf.Suppress] = dataclasses.field(
    default_factory=dict
  )


def parse_grid(
  prog: str, description: str, default: grid_job.GridJob, argv: Sequence[str] | None
) -> grid_job.GridJob:
  """A comparison job's command line: ``--help`` lists the shared settings, ``--help-recipe
  NAME`` one recipe's fields and values, and ``--recipe.NAME.FIELD VALUE`` sets any of them."""
  argv = list(sys.argv[1:] if argv is None else argv)
  names = ", ".join(default.recipe)
  if "--help-recipe" in argv:
    index = argv.index("--help-recipe")
    name = argv[index + 1] if index + 1 < len(argv) else ""
    if name not in default.recipe:
      raise UsageError(f"--help-recipe NAME: choose NAME from {names} (see {prog} --help)")
    example = f"--recipe.{name}.FIELD VALUE"
    return parse(
      lambda: tyro.cli(
        RunConfig,
        default=default.recipe[name],
        prog=f"{prog} {example}",
        description=f"The recipe {name!r}: set any field below as {example}.",
        args=["--help"],
      ),
      prog,
    )
  description = (
    f"{description.rstrip()}\n\nRecipes: {names}. One recipe's fields and values: "
    f"{prog} --help-recipe NAME; set one: --recipe.NAME.FIELD VALUE."
  )
  if any(a in ("-h", "--help") for a in argv):
    shown = _GridJobHelp(**{f.name: getattr(default, f.name) for f in dataclasses.fields(default)})
    return parse(
      lambda: tyro.cli(_GridJobHelp, prog=prog, description=description, args=argv, default=shown),
      prog,
    )
  return parse(
    lambda: tyro.cli(
      grid_job.GridJob, prog=prog, description=description, args=argv, default=default
    ),
    prog,
  )


def _known_errors() -> tuple[type[BaseException], ...]:

  return (
    ConfigError,
    directory.RunExistsError,
    directory.WorkdirError,
    data_lib.DatasetUnavailableError,
    checkpoints.CheckpointError,
    processes.ProcessError,
  )


# What a disk that refuses a write raises: full, over quota, read-only, not permitted.
_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def _describe(error: Exception) -> str:
  """A known error's message on one line; a disk error met outside the run's own checks (a
  plot, a summary) names the file and what to do."""
  if isinstance(error, _known_errors()):
    return _one_line(str(error)) or type(error).__name__
  code = checkpoints.os_error_code(error)
  where = f" {error.filename}" if isinstance(error, OSError) and error.filename else ""
  return (
    f"cannot write{where} ({os.strerror(code)}); free space or make it writable, then run the "
    "command again with --resume (the runs' checkpoints and finished results are kept)."
  )


def _leave_if_alone(error: BaseException, line: str, code: int) -> int:
  """``code``; a process of several that stopped without the others exits at once instead,
  after telling them ``line`` (``experiments.run.processes``): JAX's shutdown would wait."""
  if processes.is_alone(error):
    processes.leave_alone(error, line, code)
  return code


def main(fn: Callable[[Sequence[str] | None], int | None]) -> Callable[..., int]:
  """Wraps a script's ``main(argv)`` (see the module docstring)."""

  def wrapped(argv: Sequence[str] | None = None) -> int:
    with signals.deferred():  # a signal stops the command at its next safe point
      try:
        signals.check("before anything was written", "nothing to continue")
        code = fn(argv) or 0
        signals.check("after the command's last write", "its results are complete")
        return code
      except UsageError as e:
        print(f"error: {_one_line(str(e))}", file=sys.stderr)
        return 2
      except KeyboardInterrupt as e:  # a signal (signals.Stopped), or a second one in the loop
        line = str(e) or "interrupted: continue the run with --resume"
        print(line, file=sys.stderr)
        return _leave_if_alone(e, line, getattr(e, "exit_code", 130))
      except Exception as e:  # pylint: disable=broad-except
        lost = processes.lost_peer(e)  # another process of the run is gone
        known = isinstance(e, _known_errors()) or checkpoints.os_error_code(e) in _DISK
        if lost is None and not known:
          raise
        line = lost or _describe(e)
        print(f"error: {line}", file=sys.stderr)
        return _leave_if_alone(e, line, 1)

  wrapped.__doc__ = fn.__doc__
  return wrapped


def option_names(text: str) -> list[str]:
  """The ``--options`` a help or error text mentions (for tests)."""
  return re.findall(r"--[a-z0-9][a-z0-9.-]*", text)
