"""PTB-LSTM (Zaremba et al. 2014) on Penn Treebank: the paper's Sec. 5.4.1 recipes (Table 1,
Fig. 6a); batch 20, 35 steps, word perplexity.

The presets train Zaremba's large model (``ptb_large``: 2 x 1500, dropout 0.65, 66M parameters,
clip 10), the paper's; ``--model ptb_medium`` or ``ptb_small`` with ``--clip-norm 5`` (Zaremba's
for them) fit smaller machines. The value of Entropy-SGD's outer momentum is lost from the
paper's text: 0.5 (Nesterov) is chosen, the value its sentence on Entropy-Adam's b1 pairs with
(the paper says momentum was crucial for RNNs, and that SGD trains badly with it).
"""

from experiments.run.schema import Preset, RunConfig

BASE = RunConfig(
  dataset="ptb",
  model="ptb_large",
  batch_size=20,
  bptt_steps=35,
  clip_norm=10.0,
  eval_batch_size=10,
  momentum=0.0,
  nesterov=False,
)

PRESETS = {
  "sgd": Preset(
    "Table 1 / Fig. 6a: SGD as Zaremba's large model, lr 1 divided by 1.15 each epoch after "
    "the 14th, 55 epochs, clip 10",
    BASE.replace(
      optimizer="sgd",
      outer_epochs=55,
      learning_rate=1.0,
      lr_decay=1 / 1.15,
      lr_decay_outer_epochs=tuple(float(e) for e in range(14, 55)),
    ),
    paper={"ptb_large": "78.6 ± 0.26 (55)"},
  ),
  "entropy-sgd": Preset(
    "Table 1 / Fig. 6a: Entropy-SGD, L=5, gamma 1e-3 fixed, lr 1 divided by 10 each epoch "
    "after the third, Langevin lr 1, noise 1e-4, Nesterov 0.5 (chosen), 5 epochs (25 "
    "effective), clip 10",
    BASE.replace(
      optimizer="entropy-sgd",
      outer_epochs=5,
      learning_rate=1.0,
      lr_decay=0.1,
      lr_decay_outer_epochs=(3.0, 4.0),
      momentum=0.5,
      nesterov=True,
      langevin_steps=5,
      gamma0=1e-3,
      scoping="none",
      langevin_lr=1.0,
      noise=1e-4,
    ),
    paper={"ptb_large": "77.656 ± 0.171 (25)"},
  ),
}
