"""DINA on the macaque V4 recordings of Cowley et al. (2023), one recording per session.

  jaxvna interpret --config=configs/dina_cowley_v4.py --workdir=W \
      [--config.data.root=/path/to/cowley_v4] [--config.data.sessions="('190923','210325')"]

The data, splits and training budget of configs/vna_cowley_v4.py; the DINA model and
interpretation settings of configs/dina_sim.py. Real recordings carry no truth, so
interpret.json reports the contribution maps, key-neuron rankings, ablation curves and
the frequency probe without the truth scores. `:tiny`: the tiny variants of both.
"""

from jaxvna.configs import dina_sim, only_tiny, vna_cowley_v4


def get_config(arg=None):
  tiny = only_tiny(arg, "dina_cowley_v4")
  c = vna_cowley_v4.get_config("dina,tiny" if tiny else "dina")
  sim = dina_sim.get_config(arg)
  c.model = sim.model
  c.dina = sim.dina
  c.interpret = sim.interpret
  if not tiny:
    c.interpret.occlusion_images = 32    # a fraction of each session's held-out images
  c.interpret.probe_sigma = c.data.kwargs.get_ref("image_size") / 24
  c.eval.gabor_ridge = False
  return c
