"""All-CNN-BN on CIFAR-10: the paper's Sec. 5.3 (Table 1, Fig. 5).

The recipes with the authors' L2 of 1e-3 (their README's commands) and the Nesterov momentum
inside the Langevin loop of their code; batch 128.
"""

from experiments.config import Preset, RunConfig

BASE = RunConfig(dataset="cifar10", model="allcnn_bn", batch_size=128)

PRESETS = {
    "entropy-sgd": Preset(
        "L=20, 10 epochs (200 effective), lr 1 ÷5 every 4 epochs, Langevin lr 0.1, noise 1e-4, "
        "gamma 0.03 x 1.001 per update, Nesterov 0.9 in both loops, L2 1e-3",
        BASE.replace(
            optimizer="entropy-sgd", outer_epochs=10, langevin_steps=20, learning_rate=1.0,
            lr_decay=0.2, lr_decay_outer_epochs=(4.0, 8.0), momentum=0.9, nesterov=True,
            langevin_lr=0.1, noise=1e-4, gamma0=0.03, gamma1=1e-3, scoping="exponential",
            langevin_momentum=0.9, weight_decay=1e-3, eval_every_effective_epochs=10.0),
        paper={"allcnn_bn": "7.81 ± 0.09 (160)"}),
    "sgd": Preset(
        "Nesterov 0.9, lr 0.1 ÷5 every 60 epochs, 200 epochs, L2 1e-3",
        BASE.replace(
            optimizer="sgd", outer_epochs=200, learning_rate=0.1, lr_decay=0.2,
            lr_decay_outer_epochs=(60.0, 120.0, 180.0), momentum=0.9, nesterov=True,
            weight_decay=1e-3, eval_every_effective_epochs=5.0),
        paper={"allcnn_bn": "7.71 ± 0.19 (180)"}),
}
