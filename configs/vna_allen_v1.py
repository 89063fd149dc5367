"""VNA and its baselines on the Allen Brain Observatory mouse V1 natural scenes.

  jaxvna train --config=configs/vna_allen_v1.py --workdir=W [--config.data.root=...]
  python benchmarks/real_v4.py --config=configs/vna_allen_v1.py --workdir=W   (every method)

One recording: 212 neurons, 118 natural scenes at 31x31 grey, the given split of 100
training and 18 test images, responses averaged over 50 repeats (fluorescence changes,
signed: no log1p, and a squared-error encoding baseline). `data.root` defaults to
$JAXVNA_DATA_DIR/allen_v1_natural_scenes, else ../shared/data/allen_v1_natural_scenes
beside the repository. With 100 training pairs the towers are small and regularised.
The argument is the method, optionally followed by ",tiny": 20 steps.
"""

import ml_collections

from jaxvna.configs import common, split_tiny, vna_cowley_v4, vna_sim


def get_config(arg: str = "vna"):
  method, tiny = split_tiny(arg)
  c = vna_sim.get_config(method or "vna")
  c.data.kind = "allen_natural_scenes"
  c.data.root = vna_cowley_v4.default_root("allen_v1_natural_scenes")
  c.data.kwargs = ml_collections.ConfigDict(dict(root=c.data.get_ref("root")))
  c.data.response_mode = "mean"
  c.model.embed_dim = 64
  c.model.image_tower = common.image_tower("cnn", channels=(32, 64), hidden=(128,))
  c.model.neural_tower = common.neural_tower(readin_dim=128, hidden=(128,), preprocess="none")
  c.model.decoder_size = 31  # the direct decoder reconstructs every pixel (31 is prime)
  c.baseline.encoding_loss = "mse"
  c.optim.weight_decay = 1e-2
  c.train.steps = 600
  c.train.batch_size = 48
  c.eval.n_ways = (2, 10, "all")  # 18 test images
  if tiny:
    c.train.steps = 20
    c.train.batch_size = 16
    c.train.checkpoint_every = 10
    c.train.log_every = 10
    c.train.progress_bar = False
    c.optim.warmup_steps = 5
  return c
