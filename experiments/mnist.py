"""mnistfc and LeNet-BN on MNIST with Adam or Entropy-SGD: the paper's Sec. 5.2 (Fig. 4).

    python -m experiments.mnist entropy-sgd --model lenet_bn
    python -m experiments.mnist adam --model mnistfc
    python -m experiments.mnist entropy-sgd-lua --model lenet_bn   # as the Lua code ran it

MNIST from tensorflow-datasets, pixels scaled to [0, 1]. The presets are in
experiments/configs/mnist.py; any field is an option (PRESET --help).
"""

from __future__ import annotations

from collections.abc import Sequence

from experiments import cli, launch, reporting
from experiments.configs import mnist as configs


@cli.main
def main(argv: Sequence[str] | None = None) -> int:
  """Trains a MNIST model as the command line says; returns the exit code."""
  config, options, explicit = cli.parse_preset(
    "python -m experiments.mnist", __doc__, configs.PRESETS, argv
  )
  options = options.replace(workdir=options.workdir or launch.default_workdir(config))
  run = launch.run_experiment(config, options, explicit=explicit)
  print(reporting.format_result(run.results))
  print(f"results: {run.workdir / 'results.json'}; plot: {run.workdir / launch.PLOT_FILE}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
