"""The model blocks the configs share, every field at its default, in one place.

`jaxvna.models.towers` builds each module from these fields (`ConvTower(**fields)`): the
modules have no defaults of their own, so what a config file says is the whole model.

  model(**fields)              config.model of the dual encoder and the direct baselines
  image_tower(type, **fields)  config.model.image_tower: "cnn" | "mlp" | "features"
  neural_tower(**fields)       config.model.neural_tower

Changing a tower's type means replacing its block (`image_tower("mlp", hidden=(128,))`),
since the towers' fields and defaults differ (the CNN uses GELU, the MLPs ReLU).
"""

from __future__ import annotations

import ml_collections

# Fields of the fixed Gabor-energy first stage (`image_tower.front_end="gabor"`): kernel
# size, orientations, cycles per pixel, stride, and an average-pool window (1 = none).
GABOR = dict(size=11, orientations=4, spatial_frequencies=(0.125, 0.25), stride=2, pool=1)

IMAGE_TOWERS = {
    # conv k x k / stride per channel count -> global pool -> MLP(hidden) -> embedding
    "cnn": dict(channels=(32, 64, 128), kernel_size=3, strides=2, hidden=(), pool="mean",
                activation="gelu", front_end=None, gabor=GABOR, input_mean=0.5,
                input_std=0.25),
    # the flattened image -> MLP(hidden) -> embedding
    "mlp": dict(hidden=(512, 256), activation="relu", input_mean=0.5, input_std=0.25),
    # precomputed features of a frozen network (data field image_features) -> MLP
    "features": dict(hidden=(512,), activation="relu"),
    # a pretrained network (jaxvna.models.backbones) run on the pixels, its stage `layer`
    # pooled (mean | none | k: k x k blocks) -> MLP; `freeze` locks the network's weights;
    # input_size 0: the network's own (224 for the ResNets)
    "backbone": dict(backbone="resnet50", weights_file="", layer="layer3", pool="mean",
                     input_size=0, freeze=True, hidden=(512,), activation="relu"),
}
# Images are scaled to [0, 1] and standardised with the FIXED input_mean and input_std, not
# per image, which would erase the luminance and contrast that neurons respond to.

NEURAL_TOWER = dict(readin_dim=256, hidden=(512, 256), neuron_dropout=0.1, preprocess="none",
                    activation="relu")

MODEL = dict(
    embed_dim=128,           # the shared embedding width D of both towers
    dtype="float32",         # compute dtype ("float32" | "bfloat16"); parameters stay float32
    init_temperature=0.07,   # CLIP temperature at init ...
    min_temperature=0.01,    # ... and its floor
    init_bias=-10.0,         # SigLIP logit bias at init
    decoder_size=16,         # side of the direct decoder's grey output image
)


# `jaxvna new_subject`: a held-out subject's accuracy against the number of its images used
# (jaxvna/commands/new_subject.py).
NEW_SUBJECT = dict(
    methods=("vna", "mivae"),  # curves; a method whose block (mivae) the config lacks is skipped
    held_out=(),               # () = mivae.holdout_subjects where set, else the last recording
    image_counts=(0, 25, 50, 100, 200, -1),  # -1 = all of the subject's training images
    readin_steps=300,          # VNA: AdamW steps of the new read-in, the towers frozen
    readin_learning_rate=1e-2,
    seed=0,                    # the image permutations and the read-in's initialisation
    n_way=10,                  # the N of the plot and table (one of eval.n_ways)
)


# `jaxvna select`: settings chosen on the validation split (jaxvna/commands/select.py).
# The grid mirrors the config: each field lists the values to try; several fields give
# their product. A config file adds fields (c.select.grid.model = {"init_temperature":
# (0.03, 0.07)}); the command line can change the values of fields the grid has.
SELECT = dict(
    grid={"optim": {"weight_decay": (1e-4, 1e-2, 1e-1)}},
    score="mean",   # of decoding and encoding top-1 on validation | "decoding" | "encoding"
    n_way=10,       # the N of the score (one of eval.n_ways)
    seeds=(),       # () = config.seed alone; several: each candidate an ensemble of them
)


def select(**fields) -> ml_collections.ConfigDict:
  """The `select` block with every field at its default but `fields`."""
  return _block(SELECT, fields, "select")


def new_subject(**fields) -> ml_collections.ConfigDict:
  """The `new_subject` block with every field at its default but `fields`."""
  return _block(NEW_SUBJECT, fields, "new_subject")


def _block(defaults: dict, fields: dict, where: str, **head) -> ml_collections.ConfigDict:
  unknown = sorted(set(fields) - set(defaults))
  if unknown:
    raise ValueError(f"{where}: unknown field(s) {unknown}; expected some of {sorted(defaults)}")
  return ml_collections.ConfigDict({**head, **defaults, **fields})


def image_tower(type: str = "cnn", **fields) -> ml_collections.ConfigDict:  # pylint: disable=redefined-builtin
  """The image tower block of `type` with every field at its default but `fields`."""
  if type not in IMAGE_TOWERS:
    raise ValueError(f"image_tower: unknown type {type!r}; expected one of {sorted(IMAGE_TOWERS)}")
  return _block(IMAGE_TOWERS[type], fields, f"image_tower (type {type!r})", type=type)


def neural_tower(**fields) -> ml_collections.ConfigDict:
  """The neural tower block with every field at its default but `fields`."""
  return _block(NEURAL_TOWER, fields, "neural_tower")


def model(**fields) -> ml_collections.ConfigDict:
  """The model block: `MODEL` and a CNN image tower and neural tower at their defaults,
  but `fields` (blocks given as ConfigDicts from `image_tower` / `neural_tower`)."""
  towers = {"image_tower": image_tower(), "neural_tower": neural_tower()}
  return _block({**MODEL, **towers}, fields, "model")
