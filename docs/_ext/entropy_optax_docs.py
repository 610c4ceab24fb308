"""What the docs build makes from the repository, so that each fact stays in one place.

- ``notebooks/*.ipynb`` are copied into ``docs/notebooks/`` (git-ignored) and rendered from
  their committed outputs.
- ``docs/_generated/presets.md`` (git-ignored): every preset and recipe of
  ``experiments/configs``, as a table, included by ``reproducing.md``.
- The index's ``OPTIONAL_PAGES`` line (in its repository guides) becomes the pages of ``docs/``
  that no toctree of the index lists, so that a page added to ``docs/`` appears until the
  index names it in its part.
"""

from __future__ import annotations

import pathlib
import re
import shutil

DOCS = pathlib.Path(__file__).resolve().parent.parent
REPO = DOCS.parent
MARKER = "OPTIONAL_PAGES"
# Pages named here come first, in this order; any other page follows in alphabetical order.
PREFERRED_ORDER: tuple[str, ...] = ()


def copy_notebooks() -> None:
  target = DOCS / "notebooks"
  target.mkdir(exist_ok=True)
  for source in sorted((REPO / "notebooks").glob("*.ipynb")):
    copy = target / source.name
    if not copy.exists() or copy.read_bytes() != source.read_bytes():
      shutil.copyfile(source, copy)  # only when changed: Sphinx rebuilds what is newer


def _cell(value) -> str:
  return str(value).replace("|", "\\|").replace("\n", " ")


def _number(x: float) -> str:
  return f"{x:g}"


def presets_table() -> str:
  """Markdown: one table per experiment of experiments/configs, one row per preset."""
  from experiments.configs import EXPERIMENTS

  parts = []
  for name, module in EXPERIMENTS.items():
    recipes = hasattr(module, "MAIN_JOB")  # a comparison job: recipes, not subcommands
    how = (
      f"`python -m experiments.{name} --optimizers NAME`: recipes of the main job, which sets "
      "their length (`--effective-epochs`; the epochs below are the recipe's own)"
      if recipes
      else f"`python -m experiments.{name} NAME`"
    )
    parts.append(f"### `{name}`\n\n{how}; `{module.__name__}`.\n")
    parts.append(
      "| NAME | optimizer | model | L | outer epochs | effective epochs | lr | batch "
      "| paper's result (error %, eff. epochs) | recipe |"
    )
    parts.append("|---|---|---|---|---|---|---|---|---|---|")
    for preset_name, preset in module.PRESETS.items():
      c = preset.config
      paper = "; ".join(f"{model}: {result}" for model, result in preset.paper.items())
      parts.append(
        "| "
        + " | ".join(
          _cell(v)
          for v in (
            f"`{preset_name}`",
            c.optimizer,
            c.model,
            c.langevin_steps,
            _number(c.outer_epochs),
            _number(c.effective_epochs),
            _number(c.learning_rate),
            c.batch_size,
            paper,
            preset.description,
          )
        )
        + " |"
      )
    parts.append("")
  return "\n".join(parts)


def write_generated() -> None:
  generated = DOCS / "_generated"
  generated.mkdir(exist_ok=True)
  path = generated / "presets.md"
  text = presets_table()
  if not path.exists() or path.read_text() != text:
    path.write_text(text)


def listed_in_index(index_text: str) -> set[str]:
  names = set()
  for block in re.findall(r"```\{toctree\}\n(.*?)```", index_text, re.S):
    names.update(line.strip() for line in block.splitlines() if re.fullmatch(r"[\w/-]+", line))
  return names


def optional_pages(index_text: str) -> list[str]:
  listed = listed_in_index(index_text)
  pages = {p.stem for p in DOCS.glob("*.md")} - listed - {"index", "README", MARKER}
  rank = {name: i for i, name in enumerate(PREFERRED_ORDER)}
  return sorted(pages, key=lambda name: (rank.get(name, len(rank)), name))


def _fill_optional_pages(app, docname, source):
  if docname == "index":
    source[0] = source[0].replace(MARKER, "\n".join(optional_pages(source[0])))


def _alias_names() -> list[tuple[str, str]]:
  """(expanded, name): optax's type aliases as autodoc would spell them out, longest first."""
  import optax
  from sphinx.util.typing import stringify_annotation

  names = []
  for alias, name in (
    (optax.ScalarOrSchedule, "optax.ScalarOrSchedule"),
    (optax.Schedule, "optax.Schedule"),
  ):
    for mode in ("smart", "fully-qualified-except-typing"):
      names.append((stringify_annotation(alias, mode), name))
  names.append(("jax.jaxlib._jax.Array", "jax.Array"))  # jax.Array's defining module
  return names


def _short_signature(app, what, name, obj, options, signature, return_annotation):
  """Signatures name optax.ScalarOrSchedule instead of its 200-character expansion."""
  for expanded, alias in app.config.entropy_optax_aliases:
    signature = signature.replace(expanded, alias) if signature else signature
    if return_annotation:
      return_annotation = return_annotation.replace(expanded, alias)
  return signature, return_annotation


def _builder_inited(app):
  copy_notebooks()
  write_generated()


def setup(app):
  app.connect("builder-inited", _builder_inited)
  app.connect("source-read", _fill_optional_pages)
  app.add_config_value("entropy_optax_aliases", _alias_names(), "env")
  app.connect("autodoc-process-signature", _short_signature)
  return {"version": "1", "parallel_read_safe": True}
