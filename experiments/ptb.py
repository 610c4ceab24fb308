"""PTB-LSTM with SGD or Entropy-SGD: the paper's Penn Treebank recipes (Table 1, Fig. 6a).

    python -m experiments.ptb --data-dir simple-examples/data                # both recipes
    python -m experiments.ptb --data-dir DIR --presets ptb-entropy-sgd --size medium

Trains Zaremba et al.'s PTB-LSTM (``--size large``: 2 x 1500, ~66M parameters, the paper's; or
medium 2 x 650, small 2 x 200 for smaller machines) with the presets of
``experiments.recurrent_recipes`` (``ptb-sgd``: Zaremba's large recipe, 55 epochs;
``ptb-entropy-sgd``: L = 5, gamma 1e-3, lr 1 divided by 10 each epoch after the third, Langevin
lr 1, noise 1e-4, outer Nesterov momentum 0.5 (chosen: the paper's value is lost), 5 epochs =
25 effective epochs) and prints validation and test word perplexity beside the paper's. Needs a
GPU for the large model (hours); ``--outer-epochs`` shortens a run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib

import numpy as np

from experiments import checkpoints as ckpt_lib
from experiments import lm_training, recurrent_models, recurrent_recipes, text_data

PRESETS = ("ptb-sgd", "ptb-entropy-sgd")
PAPER_TEST_PERPLEXITY = {
  "ptb-sgd": "78.6 +- 0.26 (55 epochs)",
  "ptb-entropy-sgd": "77.656 +- 0.171 (25 effective epochs)",
}


def build_parser() -> argparse.ArgumentParser:
  """The command line (every option with its --help)."""
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
    epilog=__doc__.split("\n\n", 2)[2] + "\nPenn Treebank: " + text_data.PTB_SOURCE + ".",
  )
  parser.add_argument(
    "--data-dir",
    type=pathlib.Path,
    required=True,
    help="folder with ptb.train.txt, ptb.valid.txt, ptb.test.txt",
  )
  parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
  parser.add_argument("--size", default="large", choices=sorted(recurrent_models.PTB_SIZES))
  parser.add_argument(
    "--outer-epochs",
    type=float,
    default=None,
    help="override the presets' length (outer epochs; x L effective epochs)",
  )
  parser.add_argument("--seeds", type=int, default=1, help="seeds trained at once (vmap)")
  parser.add_argument("--evals", type=int, default=10, help="validation points per run")
  parser.add_argument(
    "--workdir",
    type=pathlib.Path,
    default=pathlib.Path("runs/ptb"),
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
  if args.seeds < 1 or args.evals < 1 or (args.outer_epochs is not None and args.outer_epochs <= 0):
    parser.error("--seeds and --evals must be >= 1, --outer-epochs > 0.")
  try:
    corpus = text_data.read_ptb(args.data_dir)
  except text_data.CorpusError as error:
    parser.error(str(error))
  model = recurrent_models.ptb_lstm(args.size, corpus.vocab_size)
  print(
    f"PTB: {len(corpus.train)} / {len(corpus.valid)} / {len(corpus.test)} words, "
    f"vocabulary {corpus.vocab_size}; PTB-LSTM {args.size}, "
    f"{recurrent_models.count_params(model):,} parameters"
  )
  results = {}
  for name in args.presets:
    recipe = recurrent_recipes.RECIPES[name]
    if args.outer_epochs is not None:
      recipe = dataclasses.replace(recipe, outer_epochs=args.outer_epochs)
    if args.size != "large":  # Zaremba: clip 10 for the large model, 5 for the others
      recipe = dataclasses.replace(recipe, clip_norm=5.0)
    try:
      results[name] = lm_training.train_and_evaluate(
        recipe,
        model,
        corpus,
        list(range(args.seeds)),
        args.evals,
        eval_batch_size=10,
        workdir=args.workdir / name,
        resume=args.resume,
      )
    except ckpt_lib.CheckpointError as error:
      parser.error(str(error))
  print("\npreset            eff.ep  valid ppl          test ppl           wall s   paper (test)")
  for name, result in results.items():
    v, t = (np.asarray(result[s]["perplexity"]) for s in ("valid", "test"))
    print(
      f"{name:17s} {result['effective_epochs']:6.2f}  {v.mean():8.2f} +- {v.std():5.2f}  "
      f"{t.mean():8.2f} +- {t.std():5.2f}  {result['wall_s']:7.0f}  "
      f"{PAPER_TEST_PERPLEXITY[name]}"
    )
  args.workdir.mkdir(parents=True, exist_ok=True)
  (args.workdir / "results.json").write_text(json.dumps({"size": args.size, **results}, indent=1))
  print(f"saved {args.workdir / 'results.json'}")


if __name__ == "__main__":
  main()
