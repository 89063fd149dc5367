"""VNA and its baselines on the macaque V4 recordings of Cowley et al. (2023).

  jaxvna train --config=configs/vna_cowley_v4.py --workdir=W \
      [--config.data.root=/path/to/cowley_v4] [--config.data.sessions="('190923','210325')"]

`data.root` defaults to $JAXVNA_DATA_DIR/cowley_v4, else ../shared/data/cowley_v4
beside the repository; `data.sessions` None reads every session in the folder. Images are
resized to 64x64 grey. The argument is the method, optionally followed by ",tiny" ("tiny"
alone: VNA's): vna_sim.py's tiny towers and steps on two sessions at 32x32.
"""

import os
import pathlib

import ml_collections

from jaxvna.configs import split_tiny, vna_sim


def default_root(folder: str = "cowley_v4") -> str:
  """$JAXVNA_DATA_DIR/<folder>, else ../shared/data/<folder> beside the repository (or the
  working directory) where it exists."""
  env = os.environ.get("JAXVNA_DATA_DIR")
  if env:
    return str(pathlib.Path(env) / folder)
  candidates = [pathlib.Path(__file__).resolve().parents[1].parent, pathlib.Path.cwd().parent]
  for base in candidates:
    if (base / "shared" / "data" / folder).is_dir():
      return str(base / "shared" / "data" / folder)
  return str(candidates[0] / "shared" / "data" / folder)


def get_config(arg: str = "vna"):
  _, tiny = split_tiny(arg)
  c = vna_sim.get_config(arg)  # the method, and vna_sim.py's tiny towers and steps if tiny
  c.data.kind = "cowley_v4"
  c.data.root = default_root()
  c.data.sessions = ml_collections.config_dict.placeholder(tuple)  # None: every session
  c.data.kwargs = ml_collections.ConfigDict(dict(
      root=c.data.get_ref("root"), sessions=c.data.get_ref("sessions"), image_size=64,
      grayscale=True, split_fractions=(0.8, 0.1, 0.1), split_seed=0))
  c.data.response_mode = "trial"
  if tiny:
    c.data.sessions = ("210305", "210325")  # the two smallest: 1,040 images
    c.data.kwargs.image_size = 32
  else:
    c.train.steps = 600
    c.train.batch_size = 256
    c.eval.n_ways = (2, 10, 50, "all")
  return c
