"""mnistfc and LeNet-BN on MNIST with Adam or Entropy-SGD: the paper's Sec. 5.2 (Fig. 4).

    python -m experiments.mnist entropy-sgd --model lenet_bn
    python -m experiments.mnist adam --model mnistfc
    python -m experiments.mnist entropy-sgd-lua --model lenet_bn   # as the Lua code ran it

MNIST from a directory of its four IDX files (--data-dir) or tensorflow-datasets, pixels
scaled to [0, 1]. The presets are in experiments/configs/mnist.py; any field is an option
(PRESET --help). Fashion-MNIST: python -m experiments.fashion_mnist.
"""

from __future__ import annotations

from collections.abc import Sequence

from experiments.configs import mnist as configs
from experiments.launch import cli, jobs


@cli.main
def main(argv: Sequence[str] | None = None) -> int:
  """Trains a MNIST model as the command line says; returns the exit code."""
  return jobs.run_preset("python -m experiments.mnist", __doc__, configs.PRESETS, argv)


if __name__ == "__main__":
  raise SystemExit(main())
