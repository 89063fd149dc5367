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
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Backbone:
  """A pretrained image network: module, variables, preprocessing and stage names."""
  name: str
  module: Any
  variables: dict
  preprocess: Callable
  stages: tuple[str, ...]

  def __call__(self, images, stages=None) -> dict:
    """{stage: activations} of `images` (B, H, W, C) float in [0, 1], for `stages`
    (default all), the network in eval mode."""
    out = self.module.apply(self.variables, self.preprocess(images), train=False)
    return {s: out[s] for s in (self.stages if stages is None else stages)}
