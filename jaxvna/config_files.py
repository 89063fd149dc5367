"""Where run configs live, and how one config file builds on another.

The repository's top-level `configs/` folder is installed as the package `jaxvna.configs`
(see setup.py). Config files load their siblings by path, so they work the same from the
repository, from an installed copy and from a user's own folder.
"""

from __future__ import annotations

import importlib.util
import pathlib
import types


def configs_dir() -> pathlib.Path:
  """The shipped configs: the installed `jaxvna.configs`, else the repository's configs/."""
  spec = importlib.util.find_spec("jaxvna.configs")
  if spec is not None and spec.submodule_search_locations:
    return pathlib.Path(list(spec.submodule_search_locations)[0])
  return pathlib.Path(__file__).resolve().parents[1] / "configs"


def sibling(config_file: str, name: str) -> types.ModuleType:
  """Loads the config module `name` that lies beside `config_file` (pass `__file__`)."""
  path = pathlib.Path(config_file).resolve().with_name(f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"jaxvna_config_{name}", path)
  if spec is None or not path.is_file():
    raise FileNotFoundError(f"{config_file}: no config {name}.py beside it")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
