"""mnistfc and LeNet-BN on MNIST: the paper's Sec. 5.2 (Table 1, Fig. 4); batch 128.

The models keep the authors' dropout (mnistfc: 0.2 on the input, 0.5 after each hidden layer;
LeNet: 0.5); the paper lowers it for Entropy-SGD by amounts lost from its text (--dropout,
--input-dropout). Choose the model with --model (default lenet_bn).
"""

from experiments.config import Preset, RunConfig

BASE = RunConfig(dataset="mnist", model="lenet_bn", batch_size=128)

PRESETS = {
    "entropy-sgd": Preset(
        "L=20, 5 epochs (100 effective), lr 1 ÷10 after epoch 2, Langevin lr 0.1, noise 1e-3, "
        "gamma 1e-4 x 1.001 per update, Nesterov 0.9 in both loops",
        BASE.replace(
            optimizer="entropy-sgd", outer_epochs=5, langevin_steps=20, learning_rate=1.0,
            lr_decay=0.1, lr_decay_outer_epochs=(2.0,), momentum=0.9, nesterov=True,
            langevin_lr=0.1, noise=1e-3, gamma0=1e-4, gamma1=1e-3, scoping="exponential",
            langevin_momentum=0.9, eval_every_effective_epochs=5.0),
        paper={"mnistfc": "1.37 ± 0.03 (120)", "lenet_bn": "0.50 ± 0.01 (80)"}),
    "adam": Preset(
        "lr 1e-3 ÷5 every 30 epochs, 100 epochs",
        BASE.replace(
            optimizer="adam", outer_epochs=100, learning_rate=1e-3, lr_decay=0.2,
            lr_decay_outer_epochs=(30.0, 60.0, 90.0), eval_every_effective_epochs=5.0),
        paper={"mnistfc": "1.39 ± 0.03 (66)", "lenet_bn": "0.51 ± 0.01 (100)"}),
}
