"""DINA on the embedded simulator: multi-level alignment, checked against the truth.

  jaxvna train --config=configs/dina_sim.py --workdir=W       (results.json: results.dina)
  jaxvna interpret --config=configs/dina_sim.py --workdir=W   (trains if needed; interpret.json)
  jaxvna interpret --config=configs/dina_sim.py:tiny --workdir=W   (800 32x32 images, 150 steps)

A V1-like population (simple and complex cells) with a quarter of nonresponsive neurons,
so that the contribution maps can be compared with the population's receptive-field
coverage and the key-neuron ranking with the responsive mask (targets in the README).
"""

import ml_collections

from jaxvna.configs import common, only_tiny, vna_sim


def get_config(arg=None):
  tiny = only_tiny(arg, "dina_sim")
  c = vna_sim.get_config("dina")
  c.data.kwargs = ml_collections.ConfigDict(dict(
      seed=0, num_subjects=2, num_images=4000, image_size=48,
      neurons_per_subject=(300, 250), cell_type_fractions=(0.4, 0.35, 0.0, 0.25),
      spatial_frequency_range=(3.0, 10.0)))
  c.model.embed_dim = 64
  c.model.image_tower = common.image_tower("cnn")
  c.model.neural_tower = common.neural_tower(hidden=(256,), preprocess="log1p")

  c.dina = ml_collections.ConfigDict(dict(
      levels=("level2", "level3"),     # ConvTower feature maps aligned, each with its own loss
      level_weights=(1.0, 1.0)))
  # `jaxvna interpret` (may change without retraining the run in the workdir).
  c.interpret = ml_collections.ConfigDict(dict(
      map_images=1000,                 # held-out images averaged into the contribution maps
      occlusion_images=64,             # of which this many are also occluded
      occlusion_patch=8,               # occluder side and stride, pixels
      occlusion_stride=4,
      example_images=6,                # per-image maps drawn in dina_image_maps.png
      attribution_split="validation",  # key neurons are ranked here, ablated on eval.split
      ablation_fractions=(0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0),
      ablation_random_rankings=5,
      ablation_fill="mean",            # ablated neurons held at their mean ("zero": set to 0)
      n_way=10,                        # N of the ablation and frequency-probe decoding
      # Gaussian low-pass sigma, pixels (high = image - low): 1/24 of the image side.
      probe_sigma=c.data.kwargs.get_ref("image_size") / 24))
  c.train.steps = 600
  c.eval.gabor_ridge = False
  if tiny:
    _make_tiny(c)
  return c


def _make_tiny(c):
  # update(), not a new dict: interpret.probe_sigma follows data.kwargs.image_size.
  c.data.kwargs.update(dict(
      num_images=800, image_size=32, neurons_per_subject=(60, 50),
      spatial_frequency_range=(2.0, 8.0)))
  c.model.embed_dim = 32
  c.model.image_tower.channels = (8, 16, 32)
  c.model.neural_tower.update(dict(readin_dim=32, hidden=(64,)))
  c.optim.update(dict(warmup_steps=10, lr=3e-3))
  c.train.update(dict(steps=150, batch_size=64, checkpoint_every=50, progress_bar=False))
  c.eval.update(dict(n_ways=(2, 10), draws=50))
  c.interpret.update(dict(map_images=64, occlusion_images=8, ablation_random_rankings=2))
