"""PTB-LSTM on Penn Treebank with SGD or Entropy-SGD: the paper's Sec. 5.4.1 (Table 1, Fig. 6a).

    python -m experiments.ptb entropy-sgd --data-dir simple-examples/data
    python -m experiments.ptb sgd --data-dir simple-examples/data
    python -m experiments.ptb entropy-sgd --data-dir DIR --model ptb_small --clip-norm 5

Penn Treebank is not downloaded automatically: get Mikolov's
http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz and pass its data/ folder (with
ptb.train.txt, ptb.valid.txt, ptb.test.txt) as --data-dir (tensorflow-datasets has no PTB
builder). The presets (experiments/configs/ptb.py) train Zaremba's large model (66M
parameters: hours on a GPU); ptb_medium and ptb_small fit smaller machines. Prints the
validation and test word perplexity beside the paper's; any field is an option (PRESET --help).
"""

from __future__ import annotations

from experiments.run import signals

# Before the slow imports below: a signal during them waits for a safe point.
signals.defer_if_main(__name__)

from collections.abc import Sequence

from experiments.configs import ptb as configs
from experiments.launch import cli, jobs


@cli.main
def main(argv: Sequence[str] | None = None) -> int:
  """Trains PTB-LSTM on Penn Treebank as the command line says; returns the exit code."""
  return jobs.run_preset("python -m experiments.ptb", __doc__, configs.PRESETS, argv)


if __name__ == "__main__":
  raise SystemExit(main())
