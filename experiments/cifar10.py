"""All-CNN-BN on CIFAR-10 with SGD or Entropy-SGD: the paper's Sec. 5.3 (Table 1, Fig. 5).

    python -m experiments.cifar10 --preset entropy-sgd
    python -m experiments.cifar10 --preset sgd
    python -m experiments.cifar10 --preset entropy-sgd --synthetic --epochs 0.1   # speed only

CIFAR-10 comes from tensorflow-datasets (downloaded and prepared the first time, which needs
TensorFlow), with global contrast normalisation and ZCA whitening fitted on the training set,
no augmentation. All-CNN-C with BatchNorm after every conv and the paper's dropout (0.2 on the
input, 0.5 after each stride-2 block), ~1.4M weights. ``--synthetic`` trains on random data of
CIFAR-10's shape, to measure speed anywhere. The run directory (default
``runs/cifar10-allcnn_bn-<optimizer>``) gets config.json, metrics.jsonl, checkpoints/,
results.json and error.png; ``--resume`` continues a killed run.
"""

from __future__ import annotations

from collections.abc import Sequence

from experiments import common

BASE = common.RunConfig(dataset="cifar10", model="allcnn_bn", batch_size=128)

# The paper's recipes (Sec. 5.3) with the authors' L2 of 1e-3 (their README's commands) and
# the Nesterov momentum inside the Langevin loop of their code.
PRESETS = {
    "entropy-sgd": dict(
        optimizer="entropy-sgd", epochs=10, langevin_steps=20, learning_rate=1.0,
        lr_decay=0.2, lr_decay_epochs=(4.0, 8.0), momentum=0.9, nesterov=True,
        langevin_lr=0.1, noise=1e-4, gamma0=0.03, gamma1=1e-3, scoping="exponential",
        langevin_momentum=0.9, weight_decay=1e-3, eval_every=10.0),
    "sgd": dict(
        optimizer="sgd", epochs=200, learning_rate=0.1, lr_decay=0.2,
        lr_decay_epochs=(60.0, 120.0, 180.0), momentum=0.9, nesterov=True, weight_decay=1e-3,
        eval_every=5.0),
}

EPILOG = """presets (the paper's recipes, Sec. 5.3; its results in Table 1):
  entropy-sgd  L=20, 10 epochs = 200 effective epochs, lr 1 divided by 5 every 4 epochs,
               langevin lr 0.1, noise 1e-4, gamma 0.03 x 1.001 per update, Nesterov 0.9 in
               both loops, L2 1e-3: paper 7.81 +- 0.09% test error (160 effective epochs)
  sgd          Nesterov 0.9, lr 0.1 divided by 5 every 60 epochs, 200 epochs, batch 128,
               L2 1e-3: paper 7.71 +- 0.19% (180 epochs)
"""


def parser():
  p = common.new_parser("python -m experiments.cifar10", __doc__.splitlines()[0], EPILOG)
  common.add_config_options(p, BASE, PRESETS, choices={"model": ("allcnn_bn",)})
  common.add_run_options(p, "runs/cifar10-allcnn_bn-<optimizer>[-synthetic]")
  return p


@common.cli
def main(argv: Sequence[str] | None = None) -> int:
  """Trains All-CNN-BN on CIFAR-10 as the command line says; returns the exit code."""
  return common.run_script(parser, BASE, PRESETS, argv)


if __name__ == "__main__":
  raise SystemExit(main())
