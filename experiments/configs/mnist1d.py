"""MNIST-1D (Greydanus 2020), offline: the main job's recipes, compared at equal effective epochs.

Adam's recipe is the benchmark's (lr 1e-2, batch 100). The local-entropy ones use L = 5 so that
a short budget still makes hundreds of updates, the paper's Langevin settings (step 0.1, noise
1e-4, alpha 0.75, Nesterov 0.9 inside as both authors' codes), and a scope that starts at 0.03
and grows 1.001x per update. Their outer learning rates were picked from three values each
(Entropy-SGD 0.1, 0.3, 1; Entropy-Adam 3e-3, 1e-2, 3e-2) on 50-effective-epoch runs of both
models; the benchmark has no validation split, so this looked at test accuracy, as the
baselines' published settings did. The job (experiments/mnist1d.py) sets the budget, the
learning-rate drops and the shared fields of every run (``experiments.launch.grid_job.GridJob``).
"""

from experiments.run.schema import Preset, RunConfig

BASE = RunConfig(
  dataset="mnist1d",
  model="mlp1d",
  batch_size=100,
  num_seeds=3,
  lr_decay=0.1,
  checkpoint_every_evals=4,
)
# Published test error % of the benchmark (Adam): MLP 68%, CNN 94% accuracy.
_BENCHMARK = {"mlp1d": "32 (benchmark: 68% acc.)", "cnn1d": "6 (benchmark: 94% acc.)"}
_LANGEVIN = dict(
  langevin_steps=5, langevin_lr=0.1, noise=1e-4, gamma0=0.03, gamma1=1e-3, langevin_momentum=0.9
)

PRESETS = {
  "sgd": Preset(
    "Nesterov 0.9, lr 0.1",
    BASE.replace(optimizer="sgd", learning_rate=0.1, momentum=0.9, nesterov=True),
  ),
  "adam": Preset(
    "lr 1e-2 (the benchmark's)",
    BASE.replace(optimizer="adam", learning_rate=1e-2),
    paper=_BENCHMARK,
  ),
  "entropy-sgd": Preset(
    "L=5, lr 0.3, Nesterov 0.9; Langevin lr 0.1, noise 1e-4, momentum 0.9; gamma 0.03 x "
    "1.001 per update",
    BASE.replace(
      optimizer="entropy-sgd", learning_rate=0.3, momentum=0.9, nesterov=True, **_LANGEVIN
    ),
  ),
  "entropy-adam": Preset(
    "L=5, lr 3e-2; the same Langevin settings",
    BASE.replace(optimizer="entropy-adam", learning_rate=3e-2, **_LANGEVIN),
  ),
  "entropy-sgd-auto": Preset(
    "Entropy-SGD's recipe with the automatic scope: gamma set after every update so that "
    "norm(gamma (x - mu)) / norm(grad f) follows 0.02 x 1.001 per update (gamma 0.03 at the "
    "first update only)",
    BASE.replace(
      optimizer="entropy-sgd",
      learning_rate=0.3,
      momentum=0.9,
      nesterov=True,
      **{**_LANGEVIN, "scoping": "auto"},
    ),
  ),
  "entropy-adam-auto": Preset(
    "Entropy-Adam's recipe with the automatic scope (as entropy-sgd-auto)",
    BASE.replace(optimizer="entropy-adam", learning_rate=3e-2, **{**_LANGEVIN, "scoping": "auto"}),
  ),
  "sgld": Preset(
    "the paper's SGLD baseline (App. C.1): step 1 / (1 + t)^0.55, noise sqrt(2 lr_t T), "
    "T = 1/4000, no momentum; ignores the job's learning-rate drops",
    BASE.replace(
      optimizer="sgld", learning_rate=1.0, sgld_decay_power=0.55, sgld_temperature=1 / 4000
    ),
  ),
  "parle": Preset(
    "Parle, n=4 replicas (each its own data order and noise), each Entropy-SGD's recipe; "
    "rho 1 (the authors' code's) scoped like gamma, caps gamma <= 1, rho <= 10; the replicas' "
    "average evaluated",
    BASE.replace(
      optimizer="parle",
      learning_rate=0.3,
      momentum=0.9,
      nesterov=True,
      replicas=4,
      rho=1.0,
      gamma_max=1.0,
      rho_max=10.0,
      **_LANGEVIN,
    ),
  ),
  "sgd-dp": Preset(
    "data-parallel SGD on 4 workers: 4 replicas of SGD's recipe (each its own mini-batch of "
    "100) averaged after every step, SGD with batch 400 at SGD's lr 0.1",
    BASE.replace(optimizer="sgd", learning_rate=0.1, momentum=0.9, nesterov=True, replicas=4),
  ),
  "smoothing-sgd": Preset(
    "SGD (Nesterov 0.9, lr 0.1) on the Gaussian-smoothed loss, sigma 0.03: L=5, the gradient "
    "at x + 4 perturbed ones per update, Entropy-SGD's cost",
    BASE.replace(
      optimizer="smoothing-sgd",
      learning_rate=0.1,
      momentum=0.9,
      nesterov=True,
      langevin_steps=5,
      smoothing_sigma=0.03,
    ),
  ),
}
# The recipes the main job (python -m experiments.mnist1d) trains by default; the others run
# with --optimizers (smoothing-sgd is in the sensitivity study: python -m experiments.sensitivity;
# parle and sgd-dp: docs/parle.md, python -m experiments.mnist1d --optimizers parle entropy-sgd
# sgd sgd-dp; entropy-adam-auto: docs/auto_scope.md).
MAIN_JOB = ("sgd", "adam", "entropy-sgd", "entropy-adam", "entropy-sgd-auto", "sgld")

# The job's defaults: every run gets this budget, and its learning rate drops by BASE.lr_decay
# at these fractions of the run.
EFFECTIVE_EPOCHS = 100.0
LR_DECAY_AT_FRACTIONS = (0.5, 0.75)
EVAL_EVERY_EFFECTIVE_EPOCHS = 5.0
