"""All-CNN-BN on CIFAR-10 with SGD or Entropy-SGD: the paper's Sec. 5.3 (Table 1, Fig. 5).

    python -m experiments.cifar10 entropy-sgd
    python -m experiments.cifar10 sgd
    python -m experiments.cifar10 entropy-sgd-lua                  # as the Lua code ran it
    python -m experiments.cifar10 parle                            # Parle, 3 replicas
    python -m experiments.cifar10 entropy-sgd --synthetic --outer-epochs 0.1   # speed only

CIFAR-10 from tensorflow-datasets (downloaded and prepared the first time), with global
contrast normalisation and ZCA whitening fitted on the training set, no augmentation. The
presets are in experiments/configs/cifar10.py; any field is an option (PRESET --help).
"""

from __future__ import annotations

from experiments.run import signals

# Before the slow imports below: a signal during them waits for a safe point.
signals.defer_if_main(__name__)

from collections.abc import Sequence

from experiments.configs import cifar10 as configs
from experiments.launch import cli, jobs


@cli.main
def main(argv: Sequence[str] | None = None) -> int:
  """Trains All-CNN-BN on CIFAR-10 as the command line says; returns the exit code."""
  return jobs.run_preset("python -m experiments.cifar10", __doc__, configs.PRESETS, argv)


if __name__ == "__main__":
  raise SystemExit(main())
