"""jaxvna: align images with neural population responses in JAX/Flax.

Importing the package is light: submodules (and JAX) load when first used, `jaxvna.VNA`
(the scikit-learn-style estimator of `jaxvna.estimator`) included.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("data", "losses", "models", "evaluation", "training", "methods", "commands")
# Top-level names, each with the submodule that defines it.
_EXPORTS = {"VNA": "jaxvna.estimator"}


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f"jaxvna.{name}")
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f"module 'jaxvna' has no attribute {name!r}")
