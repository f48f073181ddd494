"""jscale.fit is a generic scaling-law library: it imports nothing of jscale outside
itself but the typed errors (jscale.errors), and none of the sweep's vocabulary
(results.csv columns, compression passes) appears in its code; ``jscale.sweep.analysis``
translates a sweep for it."""

import ast
import pathlib

import pytest

from jscale import compress
from jscale.sweep import results

FIT = pathlib.Path(__file__).resolve().parents[1] / "jscale" / "fit"
SOURCES = sorted(FIT.glob("*.py"))
# Words a results.csv shares with the fitter, each used in the fitter's own sense: the
# bootstrap seed, and Frantar et al.'s sparsity law (a law name, not the column).
SHARED_WORDS = {"seed", "sparsity"}


def _imported_modules(tree: ast.Module) -> list[str]:
  """Every module an import statement anywhere in the file names (relative ones too)."""
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found += [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      found.append("." * node.level + (node.module or ""))
  return found


def _code_strings(tree: ast.Module) -> set[str]:
  """String constants of the code, docstrings left out (prose may mention anything)."""
  docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef))
                and ast.get_docstring(node, clean=False) is not None}
  return {node.value for node in ast.walk(tree)
          if isinstance(node, ast.Constant) and isinstance(node.value, str)
          and id(node) not in docstrings}


def test_there_are_sources_to_check():
  assert {"api.py", "plots.py", "report.py"} <= {p.name for p in SOURCES}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_fit_imports_nothing_of_jscale_outside_jscale_fit(path):
  modules = _imported_modules(ast.parse(path.read_text()))
  outside = [m for m in modules if m.startswith(".")
             or (m.split(".")[0] == "jscale"
                 and not m.startswith(("jscale.fit", "jscale.errors")))]
  assert not outside, f"jscale/fit/{path.name} imports {outside}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_fit_code_names_no_sweep_column_or_compression_pass(path):
  vocabulary = (set(results.COLUMNS) | set(compress.PASSES)) - SHARED_WORDS
  named = _code_strings(ast.parse(path.read_text())) & vocabulary
  assert not named, f"jscale/fit/{path.name} names the sweep's {sorted(named)}"
