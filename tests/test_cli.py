"""The scripts' command line as a user reads it: short --help, one-line errors with tyro's
suggestions, a recipe's fields on request."""

from __future__ import annotations

import importlib

import pytest

SCRIPTS = (
  "mnist1d",
  "fashion_mnist",
  "charlstm",
  "cifar10",
  "mnist",
  "ptb",
  "flatness",
  "sensitivity",
  "results",
)
SCREENS = 2 * 50  # "a screen or two" of 50 lines
BOX = set("│╭╮╰╯─")


def run(script: str, argv: list[str], capsys) -> tuple[int, str, str]:
  main = importlib.import_module(f"experiments.{script}").main
  try:
    code = main(argv)
  except SystemExit as e:  # --help exits through tyro
    code = e.code
  out, err = capsys.readouterr()
  return code, out, err


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_fits_on_a_screen_or_two(script, capsys):
  code, out, _ = run(script, ["--help"], capsys)
  assert code == 0
  assert 5 < len(out.splitlines()) <= SCREENS, f"{script} --help: {len(out.splitlines())} lines"


@pytest.mark.parametrize("script", ["mnist1d", "charlstm", "fashion_mnist"])
def test_a_comparison_shows_recipe_fields_on_request(script, capsys):
  configs = importlib.import_module(f"experiments.configs.{script}")
  name, preset = next(iter(configs.PRESETS.items()))
  _, out, _ = run(script, ["--help"], capsys)
  assert "--help-recipe NAME" in out and "--recipe.NAME.FIELD" in out
  assert "--langevin-steps" not in out  # no recipe's fields in the main help
  code, out, _ = run(script, ["--help-recipe", name], capsys)
  assert code == 0 and f"--recipe.{name}.FIELD VALUE" in out
  assert "--langevin-steps" in out and f"(default: {preset.config.langevin_steps})" in out
  code, _, err = run(script, ["--help-recipe", "no-such-recipe"], capsys)
  assert code == 2 and err.startswith("error: --help-recipe NAME: choose NAME from ")
  assert name in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
  "script,argv,expected",
  [
    (
      "cifar10",
      [],
      "error: Missing subcommand: Expected one of {entropy-sgd, sgd, entropy-sgd-lua, sgd-lua, "
      "parle, sgld}. (see python -m experiments.cifar10 --help)",
    ),
    (
      "cifar10",
      ["entropy-sgd", "--langevin-step", "5"],
      "error: Unrecognized options: --langevin-step, 5; perhaps you meant --langevin-steps "
      "(see python -m experiments.cifar10 --help)",
    ),
    (
      "mnist",
      ["adam", "--learning-rate", "fast"],
      "error: Error parsing --learning-rate: could not convert string to float: 'fast' (see "
      "python -m experiments.mnist --help)",
    ),
  ],
)
def test_usage_errors_are_one_plain_line(script, argv, expected, capsys):
  code, _, err = run(script, argv, capsys)
  assert code == 2
  assert err.strip() == expected
  assert not BOX & set(err)


def test_did_you_mean_names_the_recipe_option(capsys):
  code, _, err = run("mnist1d", ["--recipe.entropy-sgd.langevin-step", "5"], capsys)
  assert code == 2 and len(err.strip().splitlines()) == 1 and not BOX & set(err)
  assert "perhaps you meant" in err and "--recipe.entropy-sgd.langevin-steps" in err
