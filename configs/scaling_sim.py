"""Scaling with data on the embedded simulator: `jaxvna scaling`'s default.

  jaxvna scaling --config=configs/scaling_sim.py --workdir=W
  jaxvna scaling --config=configs/scaling_sim.py --workdir=W --config.scaling.widths="(0.5,1.0,2.0)"
  jaxvna scaling --config=configs/scaling_sim.py:tiny --workdir=W   (3 runs of 40 steps)

VNA on 5 nested fractions of every subject's training images (1/16 to all of 3 x 2,400),
the same 300 steps of batch 256 for every run (so a small fraction is seen many more
times than a large one), 32x32 simulated images and a smaller CNN than vna_sim.py (run
times: the README's scaling section). See `jaxvna.commands.scaling` for the error, the fit and the bootstrap. The argument is the
method, optionally followed by ",tiny" ("tiny" alone: VNA's).
"""

import ml_collections

from jaxvna.configs import common, split_tiny, vna_sim


def scaling_config(tiny: bool = False) -> ml_collections.ConfigDict:
  """The `scaling` section: what to vary, what to score, how to bootstrap."""
  c = ml_collections.ConfigDict(dict(
      fractions=(0.0625, 0.125, 0.25, 0.5, 1.0),  # data.train_fraction of each run
      widths=(1.0,),        # multipliers of every hidden width of both towers
      n_way=10,             # error = 1 - mean of decoding and encoding N-way top-1
      bootstrap=1000,       # replicates (resampled held-out images) of the fit
      bootstrap_seed=0))
  if tiny:
    c.fractions = (0.25, 0.5, 1.0)  # the fewest the fit accepts
    c.bootstrap = 200
  return c


def get_config(arg: str = "vna"):
  method, tiny = split_tiny(arg)
  c = vna_sim.get_config(method or "vna")
  c.data.kwargs = ml_collections.ConfigDict(dict(
      seed=0, num_subjects=3, num_images=3750, image_size=32,
      neurons_per_subject=(300, 250, 200), spatial_frequency_range=(2.0, 8.0)))
  c.model.embed_dim = 64
  c.model.image_tower = common.image_tower("cnn", channels=(16, 32, 64), hidden=(128,))
  c.model.neural_tower = common.neural_tower(readin_dim=128, hidden=(256,), preprocess="log1p")
  c.model.decoder_size = 8
  c.optim.warmup_steps = 30
  c.train.steps = 300
  c.train.checkpoint_every = 100
  c.train.progress_bar = False
  c.eval.n_ways = (2, 10, 50, "all")
  c.eval.gabor_ridge = False
  c.scaling = scaling_config(tiny)
  if tiny:
    _make_tiny(c)
  return c


def _make_tiny(c):
  vna_sim.make_tiny(c)
  c.train.steps = 40
  c.train.checkpoint_every = 40
  c.train.log_every = 50
  c.eval.draws = 20
