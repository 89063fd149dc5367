"""Pretrained image networks as image towers and feature extractors.

A backbone is what a user brings: a Flax module, its parameters and the preprocessing it
was trained with. Any network can be used through this protocol (`Backbone`):

  module       a flax.linen Module; module.apply(variables, x, train=False) returns
               {stage name: activations}, (B, h, w, c) maps or (B, c) vectors, for every
               stage in `stages` (in network order)
  variables    {"params": ..., and e.g. "batch_stats": ...} for `module.apply`
  preprocess   images (B, H, W, C) float in [0, 1], C = 1 (grey, repeated) or 3 (RGB)
               -> the module's input (resized and normalised as in the network's training)
  stages       the stage names, first to last

Loaders for standard checkpoints:
  resnet   torchvision ResNet-18 / ResNet-50 from a torchvision state_dict file
  vit      ViT / SigLIP image encoders from big_vision .npz parameter files
`load(name, weights)` picks one by name, or calls a user's factory ("package.module:fn");
`extract.extract` computes one stage's features for a whole image set (`jaxvna features`).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

from jaxvna.errors import ConfigError

# The names `load` knows; anything else must be a "package.module:factory" of the user's.
NAMES = ("resnet18", "resnet50", "vit")
RANDOM = "random"  # `load`'s weights for randomly initialised ResNets (tests, smoke runs)


@dataclasses.dataclass(frozen=True)
class Backbone:
  """A pretrained image network: module, variables, preprocessing and stage names."""
  name: str
  module: Any
  variables: dict
  preprocess: Callable
  stages: tuple[str, ...]

  def apply(self, variables: dict, images) -> dict:
    """{stage: activations} of `images` (B, H, W, C) in [0, 1] (or uint8) with the given
    variables (this backbone's, or a model's copy of them), the network in eval mode."""
    return self.module.apply(variables, self.preprocess(images), train=False)

  def __call__(self, images, stages=None) -> dict:
    """{stage: activations} of `images` with the backbone's own variables, for `stages`
    (default all)."""
    out = self.apply(self.variables, images)
    return {s: out[s] for s in (self.stages if stages is None else stages)}


def load(name: str, weights: str, *, image_size: int | None = None, seed: int = 0) -> Backbone:
  """The backbone `name` with the parameters in the file `weights`.

  Args:
    name: "resnet18" | "resnet50" (a torchvision state_dict: .pth / .pt / .npz), "vit"
      (a big_vision .npz, ViT or SigLIP), or "package.module:factory", a function of the
      user's called as factory(weights) that returns a `Backbone`.
    weights: the parameter file; "random" gives a randomly initialised ResNet (seeded by
      `seed`), whose features mean nothing: for tests and smoke runs of the pipeline.
    image_size: the side the preprocessing resizes images to; None: the network's own
      (224 for the ResNets, the position embedding's grid for a ViT).

  Raises:
    ConfigError: an unknown name, or a factory that cannot be imported or returns no
      Backbone. DataError: the weights file is missing or not of that network.
  """
  if name in ("resnet18", "resnet50"):
    from jaxvna.models.backbones import resnet  # noqa: PLC0415 -- flax loads on use
    depth = int(name.removeprefix("resnet"))
    size = {} if image_size is None else {"image_size": image_size}
    if weights == RANDOM:
      return resnet.random_init(depth, seed=seed, **size)
    return resnet.load(weights, depth, **size)
  if name == "vit":
    if weights == RANDOM:
      raise ConfigError("backbone vit: weights='random' is only for the ResNets; a ViT's "
                        "architecture comes from its .npz file")
    from jaxvna.models.backbones import vit  # noqa: PLC0415
    return vit.load(weights, image_size=image_size)
  module_name, _, attr = name.partition(":")
  if not attr:
    raise ConfigError(f"backbone: unknown {name!r}; expected one of {NAMES} or "
                      "'package.module:factory' (a function of the weights file that returns "
                      "a jaxvna.models.backbones.Backbone)")
  try:
    factory = getattr(importlib.import_module(module_name), attr)
  except (ImportError, AttributeError) as e:
    raise ConfigError(f"backbone {name!r}: cannot import {attr} from {module_name} ({e})") from e
  backbone = factory(weights)
  if not isinstance(backbone, Backbone):
    raise ConfigError(f"backbone {name!r}: {attr}({weights!r}) returned a "
                      f"{type(backbone).__name__}, expected a Backbone")
  return backbone


def check_stage(backbone: Backbone, stage: str) -> None:
  """Raises ConfigError, naming the stages there are, unless `stage` is one of them."""
  if stage not in backbone.stages:
    raise ConfigError(f"layer: {backbone.name} has no stage {stage!r}; expected one of "
                      f"{', '.join(backbone.stages)}")
