"""MIG-Vis on the embedded simulator: latent groups of the responses, visualised by
mutual-information-guided diffusion, checked against the simulator's truth.

  jaxvna visualize --config=configs/migvis_sim.py --workdir=W
  jaxvna visualize --config=configs/migvis_sim.py:tiny --workdir=W   (3 steps per model)

Three simulated subjects, mostly higher-area-like cells reading 4 latent factors; 16x16
images so the whole run (three models, the edits, the figures) stays small enough for two
CPU cores. The read-out of edited images is the simulator's own response model. The
critic is the weak link (its image features only approximate the simulator's random
network, and they improve with data: hence 30000 images). For a GPU, scale up together:
data.kwargs.image_size=32 (spatial_frequency_range=(3.0, 12.0)), num_images=100000,
diffusion.channels=(64, 128, 128), num_res_blocks=2, stages.diffusion.steps=20000,
critic.channels=(64, 128, 256), stages.critic.steps=10000, eval.migvis.num_images=256,
ddim_steps=50.
"""

import ml_collections

from jaxvna.configs import common, only_tiny, vna_sim


def get_config(arg=None):
  tiny = only_tiny(arg, "migvis_sim")
  c = vna_sim.get_config("group_vae")
  c.data.kwargs = ml_collections.ConfigDict(dict(
      seed=0, num_subjects=3, num_images=30000, image_size=16,
      neurons_per_subject=(200, 180, 160), cell_type_fractions=(0.05, 0.05, 0.8, 0.1),
      num_latents=4, spatial_frequency_range=(2.0, 6.0)))
  # The response model of readout="direct_encoding" (real data); unused on the simulator.
  c.model.image_tower = common.image_tower("cnn", channels=(32, 64), hidden=(128,))

  c.migvis = ml_collections.ConfigDict(dict(
      # Latent dimensions per group. The simulator's factors are scalars (and its trial
      # gain one more): one dimension per group. Wider groups, e.g. (2, 2, 2, 2), leave
      # rotations inside a group free and disentangle these factors less.
      groups=(1, 1, 1, 1, 1),
      readin_dim=128, hidden=(128,), neuron_dropout=0.0,
      decoder_hidden=(),          # linear readout + softplus, like the simulator's cells
      kl_weight=1.0,
      tc_weight=10.0,             # the partial-correlation (between-group TC) penalty
      l1_weight=0.0,              # L1 on the decoder readout (sparse loadings)
      # Weak supervision of one group by known factors (weight 0: off). On the simulator
      # source "latents" (truth["latents"]) or "image_factors" (NaN entries are skipped).
      supervision=dict(group=0, source="latents", columns=(0,), weight=0.0)))
  c.critic = ml_collections.ConfigDict(dict(
      channels=(32, 64, 128), hidden=(128,), embed_dim=32, value_hidden=(64,),
      init_temperature=0.1, min_temperature=0.01,
      noise_sd=0.1))              # pixel noise augmentation (range 1) of the critic's images
  c.diffusion = ml_collections.ConfigDict(dict(
      channels=(16, 32), num_res_blocks=1, time_dim=64, schedule="cosine",
      num_timesteps=1000))
  # Training of each stage (jaxvna.methods.migvis.visualize.stage_config).
  c.stages = ml_collections.ConfigDict(dict(
      group_vae=dict(steps=1500, batch_size=256, lr=2e-3, response_mode="trial"),
      critic=dict(steps=2000, batch_size=256, lr=1e-3),
      diffusion=dict(steps=2000, batch_size=128, lr=2e-3),
      direct_encoding=dict(steps=600, batch_size=256, lr=1e-3, response_mode="trial")))
  c.train.log_every = 100

  c.eval.gabor_ridge = False
  c.eval.migvis = ml_collections.ConfigDict(dict(
      readout="simulator",        # simulator | direct_encoding (module docstring)
      split="test", recording=0,  # held-out images to edit
      num_images=64, grid_images=6,
      start="inversion",          # reach t0 by: inversion (DDIM) | noise (SDEdit)
      # "projected": the target group's gradient minus its projection on the gradients of
      # the critic's readings of the other groups, so a step leaves those readings alone;
      # "target": the plain gradient (the README's MIG-Vis section compares them).
      guidance="projected",
      # Early steps and near targets keep the edits specific: t0=0.2 or targets at 2 sd
      # move every other group along (README).
      t0=0.1,                     # edit from step t0 * T
      ddim_steps=25,              # DDIM steps from t0 back to 0
      scales=(10.0, 30.0, 100.0),  # guidance strengths s
      target_sd=1.0,              # targets at mean -/+ target_sd sd along each group's axis
      reference_size=2048,        # critic's reference bank of group values
      mig_bins=10, seed=0))
  if tiny:
    _make_tiny(c)
  return c


def _make_tiny(c):
  # Every stage runs (3 steps each) on 200 images; the edits are noise.
  c.data.kwargs.num_images = 200
  c.data.kwargs.neurons_per_subject = (20, 16, 12)
  c.migvis.groups = (1, 1)
  c.migvis.readin_dim, c.migvis.hidden = 16, (16,)
  c.migvis.supervision.weight = 1.0   # exercises the supervised group
  c.critic.channels, c.critic.embed_dim, c.critic.value_hidden = (8,), 8, (8,)
  c.diffusion.channels, c.diffusion.time_dim = (8,), 16
  for stage in ("group_vae", "critic", "diffusion"):
    c.stages[stage].steps = 3
    c.stages[stage].batch_size = 16
  c.train.progress_bar = False
  c.eval.migvis.update(dict(num_images=4, grid_images=2, scales=(1.0, 5.0), ddim_steps=2,
                            reference_size=16))
