"""jaxvna: align images with neural population responses in JAX/Flax.

Importing the package is light: submodules (and JAX) load when first used, `jaxvna.VNA`
(the scikit-learn-style estimator of `jaxvna.estimator`) included.
"""

import importlib
import importlib.machinery
import importlib.util
import pathlib
import sys

__version__ = "0.1.0"


def _configs_of_a_source_checkout() -> None:
  """Makes the repository's top-level configs/ the package `jaxvna.configs` when jaxvna is
  imported from a source checkout (e.g. `python -m jaxvna.cli` in the repository), as
  setup.py's package_dir does for an installed copy."""
  if importlib.machinery.PathFinder.find_spec("jaxvna.configs", __path__) is not None:
    return  # installed: jaxvna/configs is a real package
  folder = pathlib.Path(__file__).resolve().parent.parent / "configs"
  if not (folder / "__init__.py").is_file() or not (folder.parent / "setup.py").is_file():
    return
  spec = importlib.util.spec_from_file_location(
      "jaxvna.configs", folder / "__init__.py", submodule_search_locations=[str(folder)])
  module = importlib.util.module_from_spec(spec)
  sys.modules["jaxvna.configs"] = module
  spec.loader.exec_module(module)


_configs_of_a_source_checkout()

_SUBMODULES = ("data", "losses", "models", "evaluation", "training", "methods", "commands")
# Top-level names, each with the submodule that defines it.
_EXPORTS = {"VNA": "jaxvna.estimator"}


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f"jaxvna.{name}")
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f"module 'jaxvna' has no attribute {name!r}")
