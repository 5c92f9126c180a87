"""The import graph points one way: the library never imports the studies, and no two modules
import each other (directly or through a chain), at the top of a file or inside a function."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("dpjax", "experiments")


def module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def modules() -> dict[str, pathlib.Path]:
  found = {}
  for package in PACKAGES:
    for path in sorted((ROOT / package).rglob("*.py")):
      found[module_name(path)] = path
  return found


def imported(path: pathlib.Path, name: str, known: set[str]) -> set[str]:
  """The project modules a file imports, resolved against the known module names."""
  targets = set()
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
      names = [f"{base}.{alias.name}" for alias in node.names] + [base]
    else:
      continue
    for n in names:
      while n and n not in known:
        n = n.rpartition(".")[0]
      if n and n != name:
        targets.add(n)
  return targets


def graph() -> dict[str, set[str]]:
  found = modules()
  known = set(found)
  # A package's __init__ is reached by importing any of its modules: not an edge to follow.
  return {name: {t for t in imported(path, name, known) if not name.startswith(t + ".")}
          for name, path in found.items()}


def test_the_library_never_imports_the_studies():
  offenders = {m: sorted(t for t in targets if t.startswith("experiments"))
               for m, targets in graph().items() if m.startswith("dpjax")}
  assert not {m: t for m, t in offenders.items() if t}


def test_no_import_cycles():
  edges = graph()
  cycles = []
  state = {}

  def visit(node, stack):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(edges.get(node, ())):
      if state.get(nxt) == "open":
        cycles.append(stack[stack.index(nxt):] + [nxt])
      elif nxt not in state:
        visit(nxt, stack)
    stack.pop()
    state[node] = "done"

  for node in sorted(edges):
    if node not in state:
      visit(node, [])
  assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("name", ["dpjax.accounting", "dpjax.sampling", "dpjax.randomness"])
def test_bottom_modules_import_nothing_above_them(name):
  allowed = {"dpjax.accounting"}
  assert graph()[name] <= allowed
