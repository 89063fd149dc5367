"""miVAE on the macaque V4 recordings of Cowley et al. (2023), sessions as individuals.

  jaxvna train --config=configs/mivae_cowley_v4.py --workdir=W [--config.data.root=...]

Sessions of both animals (WE: 1909xx, PE: 2010xx-2103xx) are the subjects; two whole
sessions, one per animal, are held out of training and embedded zero-shot from their
neuron features (tuning fingerprints computed from their own training images). There is
no ground truth, so results.mivae holds the discriminative accuracies, zero_shot and
zero_shot_ratio, held_out_elbo and the neuron groups. `:tiny`: mivae_sim.py's tiny model
and steps on vna_cowley_v4.py's two tiny sessions, one of them held out.
"""

from jaxvna.configs import mivae_sim, only_tiny, vna_cowley_v4


def get_config(arg=None):
  tiny = only_tiny(arg, "mivae_cowley_v4")
  c = vna_cowley_v4.get_config("mivae,tiny" if tiny else "mivae")
  sim = mivae_sim.get_config(arg)
  c.mivae = sim.mivae
  c.mivae.holdout_subjects = ("190929", "210325")
  # Natural images carry more of what V4 responds to in their pixels than the simulator's
  # do: a larger pixel-reconstruction weight than mivae_sim.py's 0.01.
  c.mivae.image_weight = 0.05
  c.model.image_tower.hidden = (256,)
  c.model.decoder_size = 16
  c.train.steps = 1500
  c.train.checkpoint_every = 500
  c.eval.gabor_ridge = False
  if tiny:
    c.mivae.holdout_subjects = ("210325",)
    c.model.image_tower, c.model.decoder_size = sim.model.image_tower, sim.model.decoder_size
    c.optim, c.train = sim.optim, sim.train
  return c
