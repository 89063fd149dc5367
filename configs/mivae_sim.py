"""miVAE on the embedded simulator: identifiable shared latents across subjects.

  jaxvna train --config=configs/mivae_sim.py --workdir=W

Four simulated subjects with different neurons, mostly higher-area-like cells that read
the simulator's 8 latent factors; subject3 is held out of training and embedded zero-shot.
results.json reports results.mivae: discriminative accuracies, zero_shot_ratio, mcc,
rf_corr, responsive_auc (targets in the README).
"""

import ml_collections

from jaxvna.config_files import sibling

vna_sim = sibling(__file__, "vna_sim")


def get_config(arg=None):
  del arg
  c = vna_sim.get_config("mivae")
  c.data.kwargs = ml_collections.ConfigDict(dict(
      seed=0, num_subjects=4, num_images=5000, image_size=32,
      neurons_per_subject=(220, 200, 180, 200), cell_type_fractions=(0.05, 0.05, 0.8, 0.1),
      num_latents=8))
  c.model.image_tower = ml_collections.ConfigDict(dict(
      type="cnn", channels=(32, 64, 128), front_end=None, hidden=(256,)))
  c.model.decoder_size = 16

  c.mivae = ml_collections.ConfigDict(dict(
      shared_dim=8,             # z^c: one per true latent factor of the simulator
      subject_dim=2,            # z_x^m: subject-specific (e.g. the shared trial gain)
      image_private_dim=8,      # z_y^m: image content irrelevant to the neurons
      neuron_features=("tuning",),
      readin_dim=256, feature_hidden=(128,), hidden=(256,), neuron_dropout=0.1,
      image_decoder_hidden=(256,),
      # Loss weights (objectives._mivae_objective). A small image_weight keeps pixel
      # reconstruction from taking over z_y^c, which must carry what neurons respond to.
      contrastive_weight=1.0, elbo_weight=0.1, image_weight=0.003, l1_weight=0.1,
      kl_anneal_steps=300,
      # Fix the shared axes by the varimax rotation of the sparse decoder loadings (None:
      # axes as trained). Rotations leave every cosine similarity unchanged.
      rotate_axes="varimax",
      holdout_subjects=("subject3",), ratio_n_way=10,
      attribution_stimuli=256, attribution_samples=4, neuron_groups=8,
      map_smoothing=2.0))       # pixels (Gaussian sigma) before comparing pixel maps
  c.train.steps = 3000
  c.train.checkpoint_every = 1000
  c.eval.gabor_ridge = False
  return c
