"""MIG-Vis on the macaque V4 recordings of Cowley et al. (2023).

  jaxvna visualize --config=configs/migvis_cowley_v4.py --workdir=W [--config.data.root=...]
      [--config.data.sessions="('201025','190923')"]

One session by default (201025: 89 neurons, 1200 natural images; repeat-averaged
responses, so the VAE's Poisson likelihood is applied to averaged counts), images resized
to 32x32 grey. There is no ground truth, so edited images are read out by a
direct-encoding model trained on the same recordings (W/direct_encoding), then the group
VAE's encoder; visualize.json holds the shifts and the critic's MI bounds (no MIG).
Settings as in migvis_sim.py (its docstring lists bigger ones for a GPU; here also
data.kwargs.image_size=64 with diffusion.channels=(64, 128, 128)). With all ten sessions
(~8,200 training images) give the critic stages.critic.steps=1000; the README has both runs.
`:tiny`: migvis_sim.py's tiny models, 3 steps of each stage, on the same session.
"""

from jaxvna.configs import migvis_sim, only_tiny, vna_cowley_v4


def get_config(arg=None):
  tiny = only_tiny(arg, "migvis_cowley_v4")
  sim = migvis_sim.get_config(arg)
  c = vna_cowley_v4.get_config("group_vae,tiny" if tiny else "group_vae")
  c.data.sessions = ("201025",)
  c.data.kwargs.image_size = 32
  c.model.image_tower = sim.model.image_tower
  for block in ("migvis", "critic", "diffusion", "stages"):
    c[block] = sim[block]
  # No scalar ground-truth factors here: groups of two dimensions, as in the paper's IT
  # analysis, rather than the simulator's one.
  c.migvis.groups = (2, 2, 2, 2)
  c.stages.diffusion.batch_size = 64
  c.stages.critic.batch_size = 128
  # ~1,000 training images: at the simulator's 2000 steps the critic memorises them (its
  # held-out InfoNCE bound falls to about -9 nats); at 300 it stays near 0.
  c.stages.critic.steps = 300
  c.stages.direct_encoding.steps = 1000
  c.stages.direct_encoding.batch_size = 128
  c.train.log_every = sim.train.log_every
  c.eval.gabor_ridge = False
  c.eval.migvis = sim.eval.migvis
  c.eval.migvis.readout = "direct_encoding"
  if tiny:
    c.migvis.groups = (2, 2)
    c.migvis.supervision.weight = 0.0     # no known factors in real recordings
    for stage in ("critic", "diffusion", "direct_encoding"):
      c.stages[stage].update(dict(steps=3, batch_size=16))
  return c
