"""The package's import structure: every import points down the pipeline
data -> models -> compress -> train -> sweep, ``fit`` is a standalone library (the sweep
uses it, it uses nothing else of jscale), ``jscale.errors`` (the typed errors) sits below
them all and imports nothing of jscale, no import hides inside a function, and the module
graph has no cycle."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "jscale"
LAYERS = ("data", "models", "compress", "train", "sweep")
BASE = "errors"  # jscale.errors: importable from every layer, fit included


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> list[tuple[str, bool]]:
  """(imported jscale module, whether the import sits at module level) of one file."""
  tree = ast.parse(path.read_text())
  top_level = {id(node) for node in tree.body}
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jscale"):
      names = [f"{node.module}.{a.name}" for a in node.names]
      found += [(n, id(node) in top_level) for n in names]
    elif isinstance(node, ast.Import):
      found += [(a.name, id(node) in top_level) for a in node.names
                if a.name.startswith("jscale")]
  return found


def _resolve(name: str, modules: set[str]) -> str:
  """``jscale.train.step.build_run`` -> ``jscale.train.step`` (the module it lives in)."""
  while name not in modules:
    name = name.rsplit(".", 1)[0]
  return name


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}
GRAPH = {m: {_resolve(n, set(MODULES)) for n, _ in _imports(p)} - {m}
         for m, p in MODULES.items()}


def _package(module: str) -> str | None:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_pipeline(module):
  mine = _package(module)
  for target in GRAPH[module]:
    theirs = _package(target)
    if theirs is None or theirs == mine or theirs == BASE:
      continue
    if mine == "fit":
      pytest.fail(f"{module} imports {target}: jscale.fit must stand alone")
    allowed = LAYERS[:LAYERS.index(mine)] + (("fit",) if mine == "sweep" else ())
    assert theirs in allowed, f"{module} imports {target}, which is not below {mine}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_hides_inside_a_function(module):
  lazy = [name for name, top in _imports(MODULES[module]) if not top]
  assert not lazy, f"{module} imports {lazy} inside a function"


def test_the_module_graph_has_no_cycle():
  done, active = set(), []

  def visit(module):
    if module in active:
      pytest.fail("import cycle: " + " -> ".join(active[active.index(module):] + [module]))
    if module in done:
      return
    active.append(module)
    for target in sorted(GRAPH[module]):
      visit(target)
    active.pop()
    done.add(module)

  for module in sorted(GRAPH):
    visit(module)


def test_every_top_level_module_is_a_package():
  loose = sorted(p.name for p in ROOT.glob("*.py") if p.name not in ("__init__.py", "errors.py"))
  assert not loose, f"modules outside the pipeline's packages: {loose}"


def test_the_errors_module_imports_nothing_of_jscale():
  assert not GRAPH["jscale.errors"], f"jscale.errors imports {GRAPH['jscale.errors']}"
