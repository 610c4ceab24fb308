"""The configuration a run directory holds: ``config.json`` read back and checked.

``read_saved_config``: the ``RunConfig`` a run saved, a damaged file named in one line;
``check_resumable``: the one resumability check (the saved run is this one);
``saved_config``: the config a resumed run continues with, the options given checked against
it.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

from experiments.run import schema
from experiments.run.checkpoints import CheckpointError
from experiments.run.directory import CONFIG_FILE, read_json
from experiments.run.schema import ConfigError, RunConfig


def _run_config_json(info: Mapping[str, Any]) -> dict[str, Any] | None:
  """The run's config in a config.json's contents, None if it holds none. Since 2026-12 it is
  ``config``; before, ``config`` held the loop's counts in steps and the run was
  ``metadata.experiment`` (such directories still resume: tests/data/run_84cfb91)."""
  if "metadata" in info:
    return info["metadata"].get("experiment")
  return info.get("config")


# Fields every saved config has held since the first run directories.
_ALWAYS_SAVED = ("dataset", "model", "optimizer", "batch_size")


def read_saved_config(path: pathlib.Path) -> RunConfig | None:
  """The ``RunConfig`` saved in the config.json ``path``; None if it holds no run's config (a
  run these scripts did not start).

  Raises:
    CheckpointError: the file cannot be read, is not JSON (cut by a full disk, emptied) or
      its config is not a run's (fields missing, unknown or of the wrong type).
  """

  def damaged(what: str) -> CheckpointError:
    return CheckpointError(
      f"{path} is damaged ({what}): the run beside it cannot be checked against this "
      "command; restore the file, or start afresh with --overwrite (which deletes the run)."
    )

  try:
    info = read_json(path)
  except OSError as e:
    raise damaged(e.strerror or str(e)) from None
  except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
    raise damaged(f"not JSON: {' '.join(str(e).split())[:100]}") from None
  experiment = _run_config_json(info) if isinstance(info, dict) else None
  if experiment is None:
    if isinstance(info, dict) and ("metadata" in info or "config" in info):
      return None
    raise damaged("it holds no run's config")
  if not isinstance(experiment, dict):
    raise damaged("its config is not a JSON object")
  missing = [name for name in _ALWAYS_SAVED if name not in experiment]
  unknown = sorted(set(experiment) - set(schema.field_names()))
  if missing or unknown:
    raise damaged(
      "its config "
      + "; ".join(
        f"{what} {', '.join(names)}"
        for what, names in (("lacks", missing), ("has unknown fields", unknown))
        if names
      )
    )
  try:
    return schema.from_json(experiment)
  except (TypeError, ValueError) as e:
    raise damaged(f"its config does not read back: {e}") from None


def check_resumable(config_path: pathlib.Path, config: RunConfig) -> None:
  """The one resumability check: the run saved in ``config_path`` is ``config``, field for
  field.

  Raises:
    CheckpointError: config.json is missing or describes another run.
  """
  if not config_path.exists():
    raise CheckpointError(
      f"{config_path} is missing: the checkpoints beside it cannot be "
      "checked against this run; start afresh with --overwrite."
    )
  saved = read_saved_config(config_path)
  if saved is None:
    raise CheckpointError(
      f"{config_path} describes a run these scripts did not start: its checkpoints cannot be "
      "checked against this run; use another --workdir."
    )
  diffs = [
    f"{name}: saved {getattr(saved, name)!r}, now {getattr(config, name)!r}"
    for name in schema.field_names()
    if getattr(saved, name) != getattr(config, name)
  ]
  if diffs:
    raise CheckpointError(
      "the checkpoints in this run directory are from another run ("
      + "; ".join(diffs)
      + "): use another --workdir."
    )


def saved_config(
  workdir: pathlib.Path, explicit: Mapping[str, Any], prefix: str = ""
) -> RunConfig | None:
  """The config a run in ``workdir`` was started with (None if it never started): what a
  resumed run continues with, the options given explicitly checked against it.

  Raises:
    ConfigError: an option given explicitly (``explicit``) differs from the saved value.
  """
  path = pathlib.Path(workdir) / CONFIG_FILE
  if not path.exists():
    return None
  saved = read_saved_config(path)
  if saved is None:
    raise ConfigError(
      f"{workdir} holds a run that these scripts did not start; choose another --workdir."
    )
  differ = [
    f"--{prefix}{schema.option(k)[2:]} {v} (saved: {getattr(saved, k)})"
    for k, v in dict(explicit).items()
    if getattr(saved, k) != v
  ]
  if differ:
    raise ConfigError(
      f"{workdir} was started with another configuration: {'; '.join(differ)}. "
      "Drop these options to resume it, or start a new run (--overwrite or "
      "another --workdir)."
    )
  return saved
