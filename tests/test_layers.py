"""jaxvna's parts import only downward, and no module imports itself around a circle
(imports inside functions included): data < layers and towers < metrics < trainer <
methods < commands < front ends. Methods are found by name through `registry`, so shared
code never imports one."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "jaxvna"

# Each part of jaxvna and its layer: a part may import its own layer and those below.
LAYERS = {
    "correlation": 0, "errors": 0, "files": 0, "gabor": 0, "registry": 0,
    "data": 1,
    "models": 2, "losses": 2,
    "evaluation": 3,
    "training": 4,
    "methods": 5,
    "commands": 6,
    "estimator": 7, "cli": 7, "__init__": 7,
}


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> set[str]:
  """Every jaxvna module `path` imports, at the top or inside functions."""
  module = _module_name(path)
  is_package = path.name == "__init__.py"
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names if a.name.startswith("jaxvna")}
    elif isinstance(node, ast.ImportFrom):
      if node.level:  # relative import
        base = module.split(".")[:len(module.split(".")) - node.level + is_package]
        name = ".".join(base + ([node.module] if node.module else []))
      else:
        name = node.module or ""
      if name.startswith("jaxvna"):
        if name != "jaxvna":  # `from jaxvna import x` imports x, not the lazy top package
          out.add(name)
        # A dunder (`__version__`) is metadata of the package, not an import of a part.
        out |= {f"{name}.{a.name}" for a in node.names if not a.name.startswith("__")}
  return out


def _graph() -> dict[str, set[str]]:
  modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    targets = set()
    for imported in _imports(path):
      while imported and imported not in modules:  # `from pkg import name` of a non-module
        imported = imported.rpartition(".")[0]
      if imported and imported != name:
        targets.add(imported)
    graph[name] = targets
  return graph


def _part(module: str) -> str:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else "__init__"


def test_every_part_has_a_layer():
  assert {_part(m) for m in _graph()} <= set(LAYERS)


def test_parts_import_only_their_own_layer_and_below():
  upward = sorted(f"{m} -> {t}" for m, targets in _graph().items() for t in targets
                  if LAYERS[_part(t)] > LAYERS[_part(m)])
  assert upward == []


def test_no_module_imports_itself_around_a_circle():
  graph = _graph()
  # A package imports its own submodules by name (`jaxvna.methods.dina` and
  # `.interpret`); only edges between distinct modules that are not parent-child count.
  edges = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}
  state, cycles = {}, []

  def visit(node, stack):
    state[node] = "active"
    for nxt in sorted(edges.get(node, ())):
      if state.get(nxt) == "active":
        cycles.append(stack[stack.index(nxt):] + [nxt])
      elif nxt not in state:
        visit(nxt, stack + [nxt])
    state[node] = "done"

  for node in sorted(edges):
    if node not in state:
      visit(node, [node])
  assert cycles == []


def test_shared_code_never_names_a_method():
  """Dispatch on a method's name happens in the registry only: no `config.method ==` or
  `config.method in` outside jaxvna/methods/ and registry.py."""
  offenders = []
  for path in PACKAGE.rglob("*.py"):
    if "methods" in path.relative_to(PACKAGE).parts or path.name == "registry.py":
      continue
    for number, line in enumerate(path.read_text().splitlines(), 1):
      code = line.split("#")[0]
      if "config.method ==" in code or "config.method !=" in code or "config.method in" in code:
        offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
  assert offenders == []


def _module_aliases(tree: ast.AST, modules: set[str]) -> dict[str, str]:
  """{local name: jaxvna module} for the modules a file imports by name."""
  aliases = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        if a.asname and a.name in modules:
          aliases[a.asname] = a.name
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jaxvna"):
      for a in node.names:
        if f"{node.module}.{a.name}" in modules:
          aliases[a.asname or a.name] = f"{node.module}.{a.name}"
  return aliases


def test_no_module_uses_a_private_name_of_another():
  modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
  offenders = []
  for path in PACKAGE.rglob("*.py"):
    tree = ast.parse(path.read_text())
    aliases = _module_aliases(tree, modules)
    for node in ast.walk(tree):
      if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
          and node.value.id in aliases and node.attr.startswith("_")
          and not node.attr.startswith("__")):
        offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: "
                         f"{node.value.id}.{node.attr}")
    for node in ast.walk(tree):  # `from jaxvna.x import _name`
      if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jaxvna"):
        offenders += [f"{path.relative_to(PACKAGE)}:{node.lineno}: from {node.module} "
                      f"import {a.name}" for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")]
  assert offenders == []
