"""Sphinx configuration of the entropy_optax documentation.

Built offline (CI has no internet) with warnings as errors:
``python3 -m sphinx -W --keep-going -n -b html docs docs/_build/html``. The notebooks are
rendered from their committed outputs (``nb_execution_mode = "off"``; the tests execute them).
"""

from __future__ import annotations

import pathlib
import sys

DOCS = pathlib.Path(__file__).resolve().parent
REPO = DOCS.parent
sys.path.insert(0, str(REPO))  # entropy_optax and experiments/ (the generated presets table)
sys.path.insert(0, str(DOCS / "_ext"))

import entropy_optax  # noqa: E402

project = "entropy_optax"
author = "entropy_optax contributors"
copyright = "2026, entropy_optax contributors"  # noqa: A001 (Sphinx's name)
version = release = entropy_optax.__version__

extensions = [
  "sphinx.ext.autodoc",
  "sphinx.ext.autosummary",
  "sphinx.ext.napoleon",
  "sphinx.ext.viewcode",
  "myst_nb",  # MyST Markdown pages and the notebooks (includes myst_parser)
  # MathJax 3 shipped inside the package and copied into _static/: the math renders offline
  # (Sphinx's default loads MathJax from a CDN, and shows raw TeX without network).
  "sphinx-mathjax-offline",
  "entropy_optax_docs",  # docs/_ext: notebooks copied in, presets table, optional pages
]

root_doc = "index"
exclude_patterns = [
  "_build",
  "_autosummary",  # the per-name pages of earlier builds
  "Thumbs.db",
  ".DS_Store",
  "_generated/*.md",
  "README.md",
]

# API reference: docs/api/*.md, one page per group of names (as optax's), Google-style
# docstrings (napoleon); the autosummary tables there link to the entries below them.
autosummary_generate = False
autodoc_typehints = "signature"
python_maximum_signature_line_length = 88  # one parameter per line in long signatures
autodoc_member_order = "bysource"
autodoc_default_options = {"exclude-members": "__new__, __init__"}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# No intersphinx: CI is offline and jax, optax and flax ship no objects.inv in their wheels (a
# hand-written inventory would hold links no build ever checked). Their names in signatures stay
# plain text; nitpicky mode (-n) still fails on a broken reference to one of this project's names.
nitpick_ignore_regex = [
  (r"py:.*", r"(jax|jaxlib|optax|flax|numpy|np|jnp|chex|matfree|matplotlib)(\..*)?"),
  (r"py:.*", r"(typing|collections\.abc|types|numbers|pathlib)\..*"),
  (r"py:.*", r"(Any|Callable|Iterable|Iterator|Mapping|Sequence|NamedTuple|Literal|Optional)"),
  (r"py:.*", r"(int|float|bool|str|tuple|list|dict|None|object|type)"),
  (r"py:.*", r"(ArrayTree|PyTree|Params|Updates|OptState|Schedule|ScalarOrSchedule)"),
]

# MyST and notebooks.
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # rendered from the committed outputs; tests/ executes them
suppress_warnings = ["mystnb.unknown_mime_type"]

html_theme = "sphinx_book_theme"
html_title = f"entropy_optax {version}"
# No repository button: the project has no public repository address yet.
html_theme_options = {
  "path_to_docs": "docs",
  "show_toc_level": 2,
  "navigation_with_keys": False,
  "use_download_button": True,
  "navbar_persistent": [],  # no second search box in the header (the sidebar has one)
}
# One search box: the theme's field in the sidebar.
html_sidebars = {"**": ["navbar-logo", "search-field", "sbt-sidebar-nav"]}
html_static_path = ["_static"]
html_css_files = ["entropy_optax.css"]
