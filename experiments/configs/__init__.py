"""One module per experiment: ``BASE`` (a ``RunConfig``) and ``PRESETS`` (name -> ``Preset``:
a one-line description, the run, the paper's result it targets). Add an experiment by adding a
module here and a line to ``EXPERIMENTS``; its thin script calls ``experiments.launch.cli``.
``sensitivity`` and ``flatness`` are not among them: they hold the sensitivity study's grids
(``GRIDS``) and the flatness experiment's jobs (``JOBS``)."""

from experiments.configs import charlstm, cifar10, fashion_mnist, mnist, mnist1d, ptb

EXPERIMENTS = {
  "cifar10": cifar10,
  "mnist": mnist,
  "fashion_mnist": fashion_mnist,
  "mnist1d": mnist1d,
  "ptb": ptb,
  "charlstm": charlstm,
}


def _paper_results() -> dict[tuple[str, str, str], str]:
  """The paper's figures by (dataset, model, optimizer), from the presets' ``paper`` entries.

  Keyed by what a run is, not by the preset it started from: ``cifar10 entropy-sgd --optimizer
  sgd`` is compared with the paper's SGD figure. Two presets that claim different figures for
  the same run are an error here, at import.
  """
  results: dict[tuple[str, str, str], str] = {}
  for module in EXPERIMENTS.values():
    for preset in module.PRESETS.values():
      for model, figure in preset.paper.items():
        key = (preset.config.dataset, model, preset.config.optimizer)
        if results.setdefault(key, figure) != figure:
          raise ValueError(
            f"two presets give {key} different paper figures: {figure!r}, {results[key]!r}"
          )
  return results


PAPER_RESULTS = _paper_results()


def paper_result(dataset: str, model: str, optimizer: str) -> str | None:
  """The paper's (or the benchmark's) result that a run of ``dataset``, ``model`` and
  ``optimizer`` targets (``PAPER_RESULTS``), None if the presets give none."""
  return PAPER_RESULTS.get((dataset, model, optimizer))
