"""Models: the Flax towers of the dual encoder and baselines (`towers`), and the numpy
Gabor-energy + ridge baseline (`gabor_ridge`).

Importing this package is light; the tower names below load JAX/Flax on first use.
"""

import importlib

_TOWER_NAMES = ("build_model", "default_model_config", "ConvTower", "MLPTower", "FeatureHead",
                "GaborEnergyFrontEnd", "NeuralTower", "DualEncoder", "DirectEncoder",
                "DirectDecoder", "l2_normalize", "temperature_from_log", "conv2d")


def __getattr__(name):
  if name in _TOWER_NAMES:
    return getattr(importlib.import_module("jaxvna.models.towers"), name)
  if name in ("towers", "gabor_ridge"):
    return importlib.import_module(f"jaxvna.models.{name}")
  raise AttributeError(f"module 'jaxvna.models' has no attribute {name!r}")
