"""char-LSTM with Adam vs Entropy-Adam at equal effective epochs: the offline main job.

    python -m experiments.charlstm                    # pydoc_data.topics, a few minutes on CPU
    python -m experiments.charlstm --text 2600-0.txt  # War and Peace (Project Gutenberg)

Trains the char-LSTM (2 x 128, 50 steps, batch 50) with the paper's two char-LSTM recipes
(``experiments.recurrent_recipes``: ``charlstm-adam``, lr 2e-3, b1 0.9; ``charlstm-entropy-adam``,
lr 1e-2, L = 5, gamma = 0.01, b1 = 0.5, Langevin lr 0.1, noise 1e-4) for the same budget of
``--effective-epochs``. A budget of minutes is far shorter than the paper's 25-50 epochs, and its
schedules (halving every 5 epochs, or every epoch) would there only decide how soon the rate
vanishes; so both keep their initial rate and halve it at 1/2 and 3/4 of the run (the
full-length recipes are in ``experiments.recurrent_recipes``). ``--seeds`` seeds train at once
(vmap). Prints validation and test cross-entropy per character (nats and bits, mean +- std over
seeds), effective epochs and wall time, and saves ``results.json`` and a plot of validation
cross-entropy against effective epochs (the shape of the paper's Fig. 6b) in ``--workdir``,
beside one checkpointed run directory per optimizer (``--resume`` continues them).
The paper's Table 1 figures for War and Peace (1.226 Adam, 1.217 Entropy-Adam) are
cross-entropies in nats, beside which the nats column stands.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib

import numpy as np

from experiments import checkpoints as ckpt_lib
from experiments import lm_training, recurrent_models, recurrent_recipes, text_data

PAPER_NATS = {"adam": 1.226, "entropy_adam": 1.217}  # Table 1, War and Peace, test


def shortened(
  recipe: recurrent_recipes.LMRecipe, effective_epochs: float
) -> recurrent_recipes.LMRecipe:
  """``recipe`` over ``effective_epochs``, its learning rate halved at 1/2 and 3/4 of the run."""
  outer_epochs = effective_epochs / recipe.langevin_steps
  return dataclasses.replace(
    recipe,
    outer_epochs=outer_epochs,
    lr_decay=0.5,
    lr_decay_start=outer_epochs / 2,
    lr_decay_every=outer_epochs / 4,
  )


def _summary_row(name: str, result: dict) -> str:
  v, t = np.asarray(result["valid"]["nats"]), np.asarray(result["test"]["nats"])
  bits = np.asarray(result["test"]["bits"])
  return (
    f"{name:13s} {result['effective_epochs']:6.2f}  {v.mean():.4f} +- {v.std():.4f}  "
    f"{t.mean():.4f} +- {t.std():.4f}  {bits.mean():.4f}  {result['wall_s']:7.1f}   "
    f"{PAPER_NATS[name]:.3f}"
  )


def plot(results: dict, path: pathlib.Path) -> None:
  """Validation cross-entropy (nats) against effective epochs, mean and seeds' range."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(5, 3.5))
  for name, result in results.items():
    x = [c["effective_epochs"] for c in result["curve"]]
    y = np.array([c["valid_nats"] for c in result["curve"]])
    ax.plot(x, y.mean(1), marker="o", ms=3, label=name.replace("_", "-"))
    ax.fill_between(x, y.min(1), y.max(1), alpha=0.25)
  ax.set_xlabel("effective epochs")
  ax.set_ylabel("validation cross-entropy (nats/char)")
  ax.set_title("char-LSTM (cf. Fig. 6b)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
  """The command line (every option with its --help)."""
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    epilog=__doc__.split("\n\n", 2)[2],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
    "--text",
    type=pathlib.Path,
    default=None,
    help="a UTF-8 text file, split 80/10/10 in order (default: the offline "
    "pydoc_data.topics that ships with CPython)",
  )
  parser.add_argument(
    "--effective-epochs",
    type=float,
    default=2.0,
    help="budget of both optimizers, in effective epochs",
  )
  parser.add_argument("--seeds", type=int, default=3, help="seeds trained at once (vmap)")
  parser.add_argument("--evals", type=int, default=8, help="validation points per run")
  parser.add_argument(
    "--workdir",
    type=pathlib.Path,
    default=pathlib.Path("runs/charlstm"),
    help="results, plot, and one checkpointed run directory per recipe",
  )
  parser.add_argument(
    "--resume",
    action="store_true",
    help="continue the runs in --workdir from their last good checkpoints",
  )
  return parser


def main(argv=None) -> None:
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.effective_epochs <= 0 or args.seeds < 1 or args.evals < 1:
    parser.error("--effective-epochs must be > 0, --seeds and --evals >= 1.")
  try:
    corpus = (
      text_data.pydoc_corpus() if args.text is None else text_data.read_char_corpus(args.text)
    )
  except text_data.CorpusError as error:
    parser.error(str(error))
  print(
    f"{corpus.name}: {len(corpus.train)} / {len(corpus.valid)} / {len(corpus.test)} "
    f"characters, vocabulary {corpus.vocab_size}; {args.seeds} seeds"
  )
  recipes = {
    "adam": shortened(recurrent_recipes.RECIPES["charlstm-adam"], args.effective_epochs),
    "entropy_adam": shortened(
      recurrent_recipes.RECIPES["charlstm-entropy-adam"], args.effective_epochs
    ),
  }
  seeds = list(range(args.seeds))
  model = recurrent_models.char_lstm(corpus.vocab_size)
  try:
    results = {
      name: lm_training.train_and_evaluate(
        r, model, corpus, seeds, args.evals, workdir=args.workdir / name, resume=args.resume
      )
      for name, r in recipes.items()
    }
  except ckpt_lib.CheckpointError as error:
    parser.error(str(error))
  print(
    "\noptimizer     eff.ep  valid nats         test nats          test bits  wall s    "
    "paper (W&P, nats)"
  )
  for name, result in results.items():
    print(_summary_row(name, result))
  args.workdir.mkdir(parents=True, exist_ok=True)
  (args.workdir / "results.json").write_text(
    json.dumps({"corpus": corpus.name, **results}, indent=1)
  )
  plot(results, args.workdir / "valid_cross_entropy.png")
  print(f"saved {args.workdir / 'results.json'} and {args.workdir / 'valid_cross_entropy.png'}")


if __name__ == "__main__":
  main()
