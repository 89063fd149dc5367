"""Layers and towers shared by the methods:

  towers         Flax towers of the dual encoder and the direct baselines (conv, MLP,
                 feature head, pretrained backbone, Gabor-energy front end, per-subject
                 read-in and read-out)
  backbones      pretrained image networks (torchvision ResNets, big_vision ViT / SigLIP,
                 your own): loading, every stage, features of an image set
  inputs         what a model reads from a batch; example inputs for `model.init`
  distributions  diagonal Gaussians and Poisson counts of the VAEs
  gabor_ridge    the numpy Gabor-energy + ridge reference (Kay et al. 2008 style)

Importing this package is light; the tower names below load JAX/Flax on first use.
"""

import importlib

_TOWER_NAMES = ("dual_encoder", "direct_encoder", "direct_decoder", "ConvTower", "MLPTower",
                "FeatureHead", "BackboneTower",
                "GaborEnergyFrontEnd", "NeuralTower", "DualEncoder", "DirectEncoder",
                "DirectDecoder", "l2_normalize", "temperature_from_log", "conv2d")


def __getattr__(name):
  if name in _TOWER_NAMES:
    return getattr(importlib.import_module("jaxvna.models.towers"), name)
  if name in ("towers", "backbones", "inputs", "distributions", "gabor_ridge"):
    return importlib.import_module(f"jaxvna.models.{name}")
  raise AttributeError(f"module 'jaxvna.models' has no attribute {name!r}")
