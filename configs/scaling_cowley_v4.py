"""Scaling with data on the macaque V4 recordings of Cowley et al. (2023).

  jaxvna scaling --config=configs/scaling_cowley_v4.py --workdir=W \
      [--config.data.root=/path/to/cowley_v4]

VNA as in vna_cowley_v4.py (all ten sessions, 64x64 grey, 600 steps of batch 256 per run)
on the nested fractions of scaling_sim.py: 1/16 to all of every session's training
images. See `jaxvna.commands.scaling`
for the error, the fit and the bootstrap. The argument is the method, optionally followed
by ",tiny": vna_cowley_v4.py's tiny run on scaling_sim.py's three tiny fractions.
"""

from jaxvna.configs import scaling_sim, split_tiny, vna_cowley_v4


def get_config(arg: str = "vna"):
  _, tiny = split_tiny(arg)
  c = vna_cowley_v4.get_config(arg)
  c.train.progress_bar = False
  c.eval.gabor_ridge = False
  c.scaling = scaling_sim.scaling_config(tiny)
  return c
