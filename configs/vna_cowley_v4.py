"""VNA and its baselines on the macaque V4 recordings of Cowley et al. (2023).

  jaxvna train --config=configs/vna_cowley_v4.py --workdir=W \
      [--config.data.kwargs.root=/path/to/cowley_v4] [--config.data.kwargs.sessions=...]

`data.kwargs.root` defaults to ../shared/data/cowley_v4 beside the repository when it is
there (else the JAXVNA_DATA_DIR environment variable's cowley_v4/); `sessions` None reads
every session in the folder. Images are resized to 64x64 grey.
"""

import os
import pathlib

from jaxvna.configs import vna_sim


def default_root() -> str:
  env = os.environ.get("JAXVNA_DATA_DIR")
  if env:
    return str(pathlib.Path(env) / "cowley_v4")
  return str(pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cowley_v4")


def get_config(method: str = "vna"):
  c = vna_sim.get_config(method)
  c.data.kind = "cowley_v4"
  c.data.kwargs = dict(root=default_root(), sessions=None, image_size=64, grayscale=True,
                       split_fractions=(0.8, 0.1, 0.1), split_seed=0)
  c.data.response_mode = "trial"
  c.train.steps = 600
  c.train.batch_size = 256
  c.eval.n_ways = (2, 10, 50, "all")
  return c
