"""jaxvna: align images with neural population responses in JAX/Flax.

Importing the package is light: submodules (and JAX) load when first used.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("data", "losses", "models", "evaluation", "training", "interpret")


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f"jaxvna.{name}")
  raise AttributeError(f"module 'jaxvna' has no attribute {name!r}")
