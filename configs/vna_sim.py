"""VNA and its baselines on the embedded simulator: the default of `jaxvna demo`.

  jaxvna train --config=configs/vna_sim.py --workdir=W [--config.train.steps=...]
  jaxvna train --config=configs/vna_sim.py:direct_encoding --workdir=W
  jaxvna train --config=configs/vna_sim.py:gabor_lit --workdir=W
  jaxvna train --config=configs/vna_sim.py:vna,tiny --workdir=W   (a minute on a laptop)

The argument is the method, optionally followed by ",tiny" ("tiny" alone: VNA's): a
small simulator (2 subjects, 600 32x32 images), small towers and 60 steps.
"""

import ml_collections

from jaxvna.configs import common, split_tiny


def get_config(arg: str = "vna"):
  method, tiny = split_tiny(arg)
  method = method or "vna"
  if "," in method:
    unknown = sorted(set(method.split(",")[1:]))
    raise ValueError(f"vna_sim: unknown variant(s) {unknown}; expected 'tiny'")
  c = ml_collections.ConfigDict()
  c.method = method  # vna | direct_encoding | direct_decoding | gabor_lit
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.kind = "simulator"
  # "reader": data.kind's reader (or the simulator) reads the data into memory; "prepared":
  # the prepared TFDS copy in prepared_dir (the folder `jaxvna data --prepare_dir=D`
  # prints), the host pipeline reading its ArrayRecord records.
  c.data.source = "reader"
  c.data.prepared_dir = ""
  # Any keyword of jaxvna.data.simulator.simulate may be added here.
  c.data.kwargs = ml_collections.ConfigDict(dict(
      seed=0, num_subjects=3, num_images=5000, image_size=64,
      neurons_per_subject=(300, 250, 200), spatial_frequency_range=(3.0, 12.0)))
  c.data.response_mode = "trial"  # train on single trials (mean: trial averages)
  # Train on a nested fraction of each subject's training images (data-size studies).
  c.data.train_fraction = 1.0
  # Where batches are assembled: "device" (the training split on every device, each
  # step's batch drawn inside the step), "sharded" (the split's images and responses split
  # by rows over the devices, the drawn rows gathered across them), "host" (the grain
  # pipeline), or "auto" (device, else sharded, else host: the first whose split takes at
  # most device_memory_mb on each device). All draw the same batches: the choice changes
  # speed and memory only.
  c.data.placement = "auto"
  c.data.device_memory_mb = 1024.0
  c.data.read_threads = 2  # the host pipeline's grain read threads (batches read ahead: 4)
  c.data.worker_processes = 0  # grain worker processes of the host pipeline (0: threads only)

  # The towers (every field and its default: configs/common.py).
  c.model = common.model(image_tower=common.image_tower("cnn", hidden=(256,)),
                         neural_tower=common.neural_tower(preprocess="log1p"))

  # Gabor-LiT (method "gabor_lit"): the fixed Gabor-energy stage before its linear image
  # tower (kernel size, orientations, cycles per pixel, stride, pooling of the energy).
  c.gabor_lit = ml_collections.ConfigDict(dict(
      size=13, orientations=8, spatial_frequencies=(0.08, 0.16), stride=2, pool=4))

  c.loss = ml_collections.ConfigDict(dict(type="clip", impl="gather"))
  c.baseline = ml_collections.ConfigDict(dict(encoding_loss="poisson", decoding_loss="mse"))

  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-3, weight_decay=1e-4, warmup_steps=100, final_lr_fraction=0.01, clip_norm=1.0,
      max_consecutive_nonfinite=10))
  # Length of the cosine decay; None follows train.steps. Fix it to extend a run with
  # more steps along the schedule it started on.
  c.optim.decay_steps = ml_collections.config_dict.placeholder(int)

  c.train = ml_collections.ConfigDict(dict(
      steps=600, batch_size=256, checkpoint_every=200, keep_checkpoints=3, log_every=50,
      progress_bar=True,
      steps_per_call=1))  # updates per jitted call (lax.scan); calls end at log/checkpoint steps
  # "A:B": a jax.profiler trace of training steps A..B (1-based) in workdir/profile; "": none.
  c.train.profile_steps = ""

  c.eval = ml_collections.ConfigDict(dict(
      split="test", n_ways=(2, 10, 50, 100, "all"), draws=200, seed=0, gabor_ridge=True))
  # The null control: the same training again with image-response pairs shuffled within
  # each subject's training split (workdir/null_control), evaluated the same way; its
  # identification must sit at chance (results.json: "null_control"). It doubles
  # training, so None means the command's default: on in `jaxvna demo`, off in `train`.
  c.eval.null_control = ml_collections.config_dict.placeholder(bool)

  # `jaxvna new_subject` and `jaxvna select` (every field: configs/common.py).
  c.new_subject = common.new_subject()
  c.select = common.select()
  if tiny:
    make_tiny(c)
  return c


def make_tiny(c):
  """Shrinks `c` in place to the tiny variant (configs that build on this one reuse it)."""
  c.data.kwargs = ml_collections.ConfigDict(dict(
      seed=0, num_subjects=2, num_images=600, image_size=32, neurons_per_subject=(60, 40),
      spatial_frequency_range=(2.0, 8.0)))
  c.model.embed_dim = 32
  c.model.image_tower = common.image_tower("mlp", hidden=(128,))
  c.model.neural_tower = common.neural_tower(readin_dim=32, hidden=(64,), preprocess="log1p")
  c.model.decoder_size = 8
  c.optim.warmup_steps = 5
  c.optim.lr = 3e-3
  c.train.steps = 60
  c.train.batch_size = 64
  c.train.checkpoint_every = 10
  c.train.log_every = 10
  c.train.progress_bar = False
  c.eval.n_ways = (2, 10)
  c.eval.draws = 50
  c.eval.gabor_ridge = False
