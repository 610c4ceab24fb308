"""The README and the docs pages as a user reads them: their code runs, their commands parse,
the API reference has an entry for every public name, code blocks fit the page, public names
are links (roles), and no page holds notes about how it was made.

Every ```python block of a page runs, in order, in one namespace per page (a page reads top to
bottom like a script). Every ``python -m experiments.…`` line of a ```bash block parses and
validates against the script's command line, with the training stopped before it starts.
"""

from __future__ import annotations

import importlib
import pathlib
import re
import shlex

import matplotlib
import pytest

import entropy_optax
import entropy_optax.flatness
import entropy_optax.flax

matplotlib.use("Agg")  # a page that plots draws off screen

REPO = pathlib.Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
# Pages whose blocks another test runs, shortened (fewer steps), with checks on what they do.
RUN_ELSEWHERE = {
  "docs/flax.md": "tests/test_flax.py",
  "docs/porting.md": "tests/test_porting.py",
}
PUBLIC_MODULES = (entropy_optax, entropy_optax.flax, entropy_optax.flatness)


def _name(page: pathlib.Path) -> str:
  return str(page.relative_to(REPO))


def python_blocks(page: pathlib.Path) -> list[str]:
  return re.findall(r"^```python\n(.*?)^```", page.read_text(), re.S | re.M)


def commands() -> list[tuple[str, str]]:
  """(page, command) for each ``python -m experiments.…`` line of the pages' bash blocks."""
  found = []
  for page in PAGES:
    for block in re.findall(r"^```bash\n(.*?)^```", page.read_text(), re.S | re.M):
      for line in block.replace("\\\n", " ").splitlines():  # a command continued with \
        if re.match(r"python3? -m experiments\.", line):
          found.append((_name(page), line.split("  #")[0].split(" # ")[0].strip()))
  return found


def test_the_pages_have_examples_and_commands():
  assert sum(len(python_blocks(p)) for p in PAGES) >= 10
  assert len(commands()) >= 20
  assert ("README.md", "python3 -m experiments.mnist1d") not in commands()  # a set-up line


@pytest.mark.parametrize(
  "page", [p for p in PAGES if python_blocks(p) and _name(p) not in RUN_ELSEWHERE], ids=_name
)
def test_page_python_blocks_run(page, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # a block that writes files writes them here
  namespace = {"__name__": "docs_page"}
  for index, block in enumerate(python_blocks(page)):
    exec(compile(block, f"{_name(page)} python block {index}", "exec"), namespace)


@pytest.mark.parametrize("page,command", commands(), ids=lambda v: v)
def test_page_commands_parse(page, command, monkeypatch, tmp_path, capsys):
  from experiments.launch import jobs
  from experiments.studies import sensitivity_report

  class Parsed(Exception):
    pass

  def stop(*args, **kwargs):
    raise Parsed

  monkeypatch.setattr(jobs, "run_experiment", stop)
  monkeypatch.setattr(jobs, "run_grid", stop)
  monkeypatch.setattr(sensitivity_report, "run_study", stop)
  monkeypatch.chdir(tmp_path)  # a run directory made before training is made here
  argv = shlex.split(command)
  script = importlib.import_module(argv[2])
  if argv[2] == "experiments.results":
    (tmp_path / "runs").mkdir(exist_ok=True)
    assert script.main(argv[3:]) == 1
    assert "no finished run" in capsys.readouterr().err
    return
  with pytest.raises(Parsed):
    script.main(argv[3:])


def api_entries() -> dict[str, set[str]]:
  """module -> the names the API reference (docs/api.md and docs/api/*.md) documents under it:
  its autofunction, autoclass and autodata entries, and automodule for a submodule."""
  entries: dict[str, set[str]] = {}
  module = None
  for page in [DOCS / "api.md", *sorted((DOCS / "api").glob("*.md"))]:
    for block in re.findall(r"^```\{eval-rst\}\n(.*?)^```", page.read_text(), re.S | re.M):
      for line in block.splitlines():
        if m := re.match(r"\.\. (currentmodule|automodule):: ([\w.]+)", line):
          module = m.group(2)
          if m.group(1) == "automodule":
            parent, _, child = module.rpartition(".")
            entries.setdefault(parent, set()).add(child)
        elif (m := re.match(r"\.\. auto(?:function|class|data):: (\w+)", line)) and module:
          entries.setdefault(module, set()).add(m.group(1))
  return entries


@pytest.mark.parametrize("module", PUBLIC_MODULES, ids=lambda m: m.__name__)
def test_every_public_name_has_an_api_page(module):
  documented = api_entries().get(module.__name__, set())
  assert set(module.__all__) - documented == set(), "add these to a page of docs/api/"
  submodules = {m.__name__.rpartition(".")[2] for m in PUBLIC_MODULES}  # entropy_optax.flax
  stale = documented - set(module.__all__) - submodules
  assert stale == set(), "not in __all__: remove from docs/api/"


def test_index_lists_pages_that_other_work_adds(tmp_path, monkeypatch):
  """A page in docs/ that no toctree of the index names lands in the toctree that holds the
  marker (the repository guides), in alphabetical order; a page the index names does not."""
  monkeypatch.syspath_prepend(str(DOCS / "_ext"))
  ext = importlib.import_module("entropy_optax_docs")
  index = (DOCS / "index.md").read_text()
  assert ext.MARKER in index
  for name in ("zeta", "getting_started", "real_data", "parle"):
    (tmp_path / f"{name}.md").write_text(f"# {name}\n")
  monkeypatch.setattr(ext, "DOCS", tmp_path)
  assert ext.optional_pages(index) == ["real_data", "zeta"]
  source = [index]
  ext._fill_optional_pages(None, "index", source)
  assert ext.MARKER not in source[0] and "\nreal_data\nzeta\n" in source[0]


def test_index_has_library_and_repository_guides():
  index = (DOCS / "index.md").read_text()
  captions = re.findall(r"^:caption: (.*)$", index, re.M)
  assert [c.split(" (")[0] for c in captions] == [
    "Library guides",
    "Repository guides",
    "Reference",
  ]


MAX_CODE_WIDTH = 88  # characters: a code block of that width shows whole in the page's column


def code_lines(page: pathlib.Path) -> list[str]:
  """The lines of a page's code blocks (```python, ```bash, ```, ...; not ```{directive})."""
  lines, language = [], None
  for line in page.read_text().splitlines():
    if line.startswith("```"):
      language = line[3:].strip() if language is None else None
      continue
    if language is not None and not language.startswith("{"):
      lines.append(line)
  return lines


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_code_blocks_fit_the_page(page):
  wide = [line for line in code_lines(page) if len(line) > MAX_CODE_WIDTH]
  assert not wide, f"{_name(page)}: code lines over {MAX_CODE_WIDTH} characters:\n" + "\n".join(
    wide
  )


# Notes about how the docs were made (who wrote them, what they could not read, an issue as a
# source, a run named by when it was taken) speak to the docs' authors, not to users.
WORKING_NOTES = re.compile(
  r"\bhelpers?\b|\bissue \d+|\bissue's\b|\bno GPU (was )?lent\b|\bbefore this change\b"
  r"|\b(this|last) session's\b|this project's machines|\bSuggested line\b",
  re.I,
)


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_pages_speak_to_users(page):
  notes = [line for line in page.read_text().splitlines() if WORKING_NOTES.search(line)]
  assert not notes, f"{_name(page)}: say it to the user, as a condition or a fact:\n" + (
    "\n".join(notes)
  )


def _public_spellings() -> set[str]:
  """How a page may name a public object: ``name``, ``flax.name``, ``entropy_optax.name``...;
  less the names that are also state fields or flax's own class (``langevin_stats``,
  ``langevin_key``, ``TrainState``), which a page may mean as those."""
  spellings = set()
  for module in PUBLIC_MODULES:
    for name in module.__all__:
      parts = f"{module.__name__}.{name}".split(".")
      spellings.update(".".join(parts[i:]) for i in range(len(parts)))
  return spellings - {"flax", "flatness", "langevin_stats", "langevin_key", "TrainState"}


def prose(page: pathlib.Path) -> str:
  """A page without its fenced blocks (code, directives)."""
  return re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)


@pytest.mark.parametrize(
  "page",
  [
    p
    for p in PAGES
    if p.name != "README.md"  # read on a code host too, where roles do not render
  ],
  ids=_name,
)
def test_pages_link_public_names(page):
  """A public name in a page's text is a role ({func}`~entropy_optax.entropy_sgd`), which links
  to its entry and which the build checks (-n), not a plain `literal`."""
  spellings = _public_spellings()
  plain = [
    name
    for name in re.findall(r"(?<![`}\w])`([\w.]+)(?:\(\))?`(?!`)", prose(page))
    if name in spellings
  ]
  assert not plain, f"{_name(page)}: write these as roles: {sorted(set(plain))}"
