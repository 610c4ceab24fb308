"""One module per experiment: ``BASE`` (a ``RunConfig``) and ``PRESETS`` (name -> ``Preset``:
a one-line description, the run, the paper's result it targets). Add an experiment by adding a
module here and a line to ``EXPERIMENTS``; its thin script calls ``experiments.run.cli``.
``sensitivity`` and ``flatness`` are not among them: they hold the sensitivity study's grids
(``GRIDS``) and the flatness experiment's jobs (``JOBS``)."""

from experiments.configs import charlstm, cifar10, mnist, mnist1d, ptb

EXPERIMENTS = {
  "cifar10": cifar10,
  "mnist": mnist,
  "mnist1d": mnist1d,
  "ptb": ptb,
  "charlstm": charlstm,
}


def paper_result(dataset: str, model: str, optimizer: str) -> str | None:
  """The paper's (or the benchmark's) result a run of these targets, from the presets."""
  for module in EXPERIMENTS.values():
    for preset in module.PRESETS.values():
      if (preset.config.dataset, preset.config.optimizer) == (dataset, optimizer) and (
        model in preset.paper
      ):
        return preset.paper[model]
  return None
