"""Every Python block of the README runs as written."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).parent.parent / "README.md"
# "Using with Flax" is run by tests/test_flax.py, with fewer steps.
SECTIONS = [s for s in README.read_text().split("\n## ") if not s.startswith("Using with Flax")]
BLOCKS = re.findall(r"```python\n(.*?)```", "\n## ".join(SECTIONS), re.S)


def test_readme_has_examples():
  assert len(BLOCKS) >= 1


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index):
  exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {"__name__": "readme"})
