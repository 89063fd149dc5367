"""miVAE on the embedded simulator: identifiable shared latents across subjects.

  jaxvna train --config=configs/mivae_sim.py --workdir=W
  jaxvna train --config=configs/mivae_sim.py:tiny --workdir=W   (3 subjects, 150 steps)

Four simulated subjects with different neurons, mostly higher-area-like cells that read
the simulator's 8 latent factors; subject3 is held out of training and embedded zero-shot.
results.json reports results.mivae: discriminative accuracies, zero_shot_ratio, mcc,
rf_corr, responsive_auc (targets in the README).
"""

import ml_collections

from jaxvna.configs import common, only_tiny, vna_sim


def get_config(arg=None):
  tiny = only_tiny(arg, "mivae_sim")
  c = vna_sim.get_config("mivae")
  c.data.kwargs = ml_collections.ConfigDict(dict(
      seed=0, num_subjects=4, num_images=5000, image_size=32,
      neurons_per_subject=(220, 200, 180, 200), cell_type_fractions=(0.05, 0.05, 0.8, 0.1),
      num_latents=8))
  c.model.image_tower = common.image_tower("cnn", hidden=(256,))

  c.mivae = ml_collections.ConfigDict(dict(
      shared_dim=8,             # z^c: one per true latent factor of the simulator
      subject_dim=2,            # z_x^m: subject-specific (e.g. the shared trial gain)
      image_private_dim=8,      # z_y^m: image content irrelevant to the neurons
      neuron_features=("tuning",),
      readin_dim=256, feature_hidden=(128,), hidden=(256,), neuron_dropout=0.1,
      image_decoder_hidden=(256,),
      # Loss weights (jaxvna.methods.mivae.objective). A small image_weight keeps pixel
      # reconstruction from taking over z_y^c, which must carry what neurons respond to.
      contrastive_weight=1.0, elbo_weight=0.1, image_weight=0.003, l1_weight=0.1,
      kl_anneal_steps=300,
      # Fix the shared axes by the varimax rotation of the sparse decoder loadings (None:
      # axes as trained). Rotations leave every cosine similarity unchanged.
      rotate_axes="varimax",
      holdout_subjects=("subject3",), ratio_n_way=10,
      # The neuron null control: identity features shuffled across subjects' neurons
      # (set by the null controls, config.eval.null_control, in workdir/null_neurons).
      shuffle_neurons=False,
      attribution_stimuli=256, attribution_samples=4, neuron_groups=8,
      map_smoothing=2.0))       # pixels (Gaussian sigma) before comparing pixel maps
  c.train.steps = 3000
  c.train.checkpoint_every = 1000
  c.eval.gabor_ridge = False
  if tiny:
    _make_tiny(c)
  return c


def _make_tiny(c):
  # subject2 is held out; 3 latent factors for 3 shared dimensions.
  c.data.kwargs = ml_collections.ConfigDict(dict(
      seed=0, num_subjects=3, num_images=1500, image_size=16,
      neurons_per_subject=(60, 50, 40), cell_type_fractions=(0.1, 0.1, 0.7, 0.1),
      num_latents=3, spatial_frequency_range=(2.0, 6.0)))
  c.model.image_tower = common.image_tower("mlp", hidden=(64,))
  c.model.decoder_size = 8
  c.mivae.update(dict(
      shared_dim=3, image_private_dim=2, readin_dim=32, feature_hidden=(32,), hidden=(32,),
      image_decoder_hidden=(32,), kl_anneal_steps=20, holdout_subjects=("subject2",),
      attribution_stimuli=32, attribution_samples=2, neuron_groups=3))
  c.optim.update(dict(warmup_steps=10, lr=3e-3))
  c.train.update(dict(steps=150, batch_size=64, checkpoint_every=50, log_every=50,
                      progress_bar=False))
  c.eval.update(dict(n_ways=(2, 10), draws=50))
