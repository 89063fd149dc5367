"""`jaxvna.VNA`: a scikit-learn-style front door to VNA for in-memory arrays.

    model = jaxvna.VNA(steps=600, batch_size=256).fit(images, responses)
    z_img = model.transform_images(images)            # (N, D), unit rows
    z_neu = model.transform_responses(responses)      # (N, D), unit rows
    model.score(test_images, test_responses, n_way=10, task="decoding")
    model.save("vna_model"); model = jaxvna.VNA.load("vna_model")

`fit` turns the arrays into a `jaxvna.data.Dataset` (one `Recording` per subject) and
trains with `jaxvna.training.train.train`, the trainer of `jaxvna train`: the same jitted
step, mesh and checkpoints. The config is `configs/vna_sim.py`'s with the constructor's
arguments applied; any other field is a keyword, dotted or with "__" for the dots
(`**{"optim.lr": 3e-4}` or `optim__lr=3e-4`).

Arrays (N images; one subject, or a list with one entry per subject):
  images     (N, H, W) or (N, H, W, C): uint8, or float in [0, 1]. Every subject's
             images have one shape.
  responses  (N, K) trial-averaged, or (N, R, K) repeats with unrecorded repeats NaN;
             K may differ between subjects (each gets its own read-in).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import tempfile
from typing import Any, NamedTuple, Sequence

import numpy as np

from jaxvna import files
from jaxvna.data.dataset import SPLITS, DataError, Dataset, Recording, split_index

_EMBED_BATCH = 512
_MODEL_FILE = "model.json"
_PARAMS_DIR = "params"
_MODEL_FORMAT = "jaxvna.VNA"  # model.json's "format": marks a folder `save` wrote
_MODEL_KEYS = ("config", "neuron_counts", "image_shape", "subject_ids")


def _as_list(value, name: str) -> tuple[list, bool]:
  """(per-subject list, whether `value` was already a list/tuple of arrays)."""
  if isinstance(value, (list, tuple)):
    if not value:
      raise ValueError(f"{name}: empty list; expected one array per subject")
    return list(value), True
  return [value], False


def _images(images, name: str) -> np.ndarray:
  """(N, H, W[, C]) uint8 or float in [0, 1] -> (N, H, W, C) uint8."""
  x = np.asarray(images)
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4 or 0 in x.shape:
    raise ValueError(f"{name}: expected images of shape (N, H, W) or (N, H, W, C), got "
                     f"{np.shape(images)}")
  if x.dtype == np.uint8:
    return x
  if x.dtype.kind != "f":
    raise ValueError(f"{name}: expected uint8 or float images in [0, 1], got {x.dtype}")
  if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
    raise ValueError(f"{name}: float images must be finite and in [0, 1], got range "
                     f"[{np.nanmin(x):.3g}, {np.nanmax(x):.3g}]")
  return np.rint(x * 255).astype(np.uint8)


def _responses(responses, name: str) -> np.ndarray:
  """(N, K) or (N, R, K) -> (N, R, K) float32."""
  r = np.asarray(responses)
  if r.dtype.kind not in "fiu":
    raise ValueError(f"{name}: expected numeric responses, got {r.dtype}")
  if r.ndim == 2:
    r = r[:, None, :]
  if r.ndim != 3 or 0 in r.shape:
    raise ValueError(f"{name}: expected responses of shape (N, K) or (N, R, K) (images, "
                     f"[repeats,] neurons), got {np.shape(responses)}")
  return r.astype(np.float32)


def _split(split, name: str, n: int) -> np.ndarray:
  """(N,) split names or indices -> (N,) int8; None: every image is for training."""
  if split is None:
    return np.zeros(n, np.int8)
  s = np.asarray(split)
  if s.shape != (n,):
    raise ValueError(f"{name}: expected shape ({n},) (one split per image), got {s.shape}")
  if s.dtype.kind in "US":
    return np.array([split_index(str(v), source=name) for v in s], np.int8)
  if s.dtype.kind not in "iu" or (s.size and (s.min() < 0 or s.max() >= len(SPLITS))):
    raise ValueError(f"{name}: expected split names {SPLITS} or their indices 0-2")
  return s.astype(np.int8)


def arrays_to_dataset(images, responses, subject_ids: Sequence[Any] | None = None,
                      split=None, name: str = "arrays") -> Dataset:
  """A `Dataset` from per-subject arrays (see the module docstring for the shapes).

  Args:
    images: one array, or a list with one array per subject.
    responses: the same structure as `images`, with as many rows per subject.
    subject_ids: names of the subjects (default "0", "1", ...).
    split: None (every image trains), or the structure of `images` with (N,) split
      names ("train", "validation", "test") or indices; `fit` trains on "train".
    name: the dataset's name.

  Raises:
    ValueError naming the argument (and subject) whose shape or values are wrong.
  """
  image_list, many = _as_list(images, "images")
  response_list, many_responses = _as_list(responses, "responses")
  if many != many_responses or len(image_list) != len(response_list):
    describe = lambda values, is_list: f"a list of {len(values)}" if is_list else "one array"
    raise ValueError("images and responses: expected one array each, or lists of one array "
                     f"per subject of equal length; got {describe(image_list, many)} and "
                     f"{describe(response_list, many_responses)}")
  count = len(image_list)
  names = [str(s) for s in subject_ids] if subject_ids is not None else [
      str(i) for i in range(count)]
  if len(names) != count or len(set(names)) != count:
    raise ValueError(f"subject_ids: expected {count} distinct names, got {subject_ids!r}")
  if split is not None:
    split_list, many_splits = _as_list(split, "split")
    if many_splits != many or len(split_list) != count:
      raise ValueError("split: expected the structure of images (one (N,) array per subject)")
  else:
    split_list = [None] * count
  recordings = []
  for i in range(count):
    where = lambda arg: f"{arg}[{i}]" if many else arg
    x = _images(image_list[i], where("images"))
    r = _responses(response_list[i], where("responses"))
    if r.shape[0] != x.shape[0]:
      raise ValueError(f"{where('responses')}: {r.shape[0]} rows for {x.shape[0]} images in "
                       f"{where('images')}; expected one response row per image")
    if i and x.shape[1:] != recordings[0].images.shape[1:]:
      raise ValueError(f"{where('images')}: image shape {x.shape[1:]} differs from subject "
                       f"0's {recordings[0].images.shape[1:]}; resize to one shape")
    recordings.append(Recording(
        name=names[i], images=x, responses=r,
        neuron_coords=np.zeros((r.shape[2], 0), np.float32),
        split=_split(split_list[i], where("split"), x.shape[0]),
        stimulus_ids=np.arange(x.shape[0], dtype=np.int64),
        source=f"{where('responses')} (subject {names[i]!r})"))
  return Dataset(name, tuple(recordings))


def _refuse_rows(bad: np.ndarray, problem: str) -> None:
  """Raises DataError naming the rows (images) of `responses` where (N,) `bad` holds."""
  rows = np.flatnonzero(bad)
  if rows.size:
    shown = ", ".join(str(i) for i in rows[:5]) + (", ..." if rows.size > 5 else "")
    raise DataError(f"responses: rows {shown} ({rows.size} of {bad.size} images) have "
                    f"{problem}")


def _fingerprint(dataset: Dataset) -> str:
  """sha256 of every array of the dataset: a workdir is refused for other data."""
  digest = hashlib.sha256()
  for rec in dataset.recordings:
    for array in (rec.images, rec.responses, rec.split):
      digest.update(f"{rec.name}|{array.dtype}|{array.shape}".encode())
      digest.update(np.ascontiguousarray(array).tobytes())
  return digest.hexdigest()


def _set_field(config, key: str, value) -> None:
  """config[a][b]... = value for key "a.b..." or "a__b..."; unknown fields raise."""
  parts = key.replace("__", ".").split(".")
  node = config
  for i, part in enumerate(parts):
    if not hasattr(node, "keys") or part not in node:
      raise TypeError(f"VNA: unknown config field {'.'.join(parts)!r} ("
                      f"{'.'.join(parts[:i + 1])!r} does not exist; see configs/vna_sim.py)")
    if i < len(parts) - 1:
      node = node[part]
  node[parts[-1]] = value


def _read_model_file(path: pathlib.Path) -> dict:
  """The fields of a model.json that `VNA.save` wrote; DataError naming `path` otherwise."""
  expected = f"expected the {_MODEL_FILE} that VNA.save writes"
  try:
    meta = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise DataError(f"{path}: cannot read as JSON ({e}); {expected}") from e
  if not isinstance(meta, dict):
    raise DataError(f"{path}: holds a JSON {type(meta).__name__}; {expected} (an object)")
  missing = [k for k in _MODEL_KEYS if k not in meta]
  if missing:
    raise DataError(f"{path}: missing fields {missing}; {expected}")
  # Models saved before the "format" field have none; any other value is another program's.
  if meta.get("format", _MODEL_FORMAT) != _MODEL_FORMAT:
    raise DataError(f"{path}: field 'format' is {meta['format']!r}, not {_MODEL_FORMAT!r}; "
                    f"{expected}")
  if not isinstance(meta["config"], dict):
    raise DataError(f"{path}: field 'config' is a JSON {type(meta['config']).__name__}; "
                    f"{expected} (an object)")
  return meta


def _why_not_a_model(path: pathlib.Path) -> str | None:
  """What in the folder `path` is not part of a model `save` wrote; None if nothing is."""
  names = sorted(p.name for p in path.iterdir())
  foreign = [n for n in names if n not in (_MODEL_FILE, _PARAMS_DIR)]
  if foreign:
    return f"not a model's: {', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}"
  params = path / _PARAMS_DIR
  if _PARAMS_DIR in names and (params.is_symlink() or not params.is_dir()):
    return f"{_PARAMS_DIR} is not a folder"
  if _MODEL_FILE not in names:
    return f"no {_MODEL_FILE}"
  try:
    _read_model_file(path / _MODEL_FILE)
  except DataError:
    return f"{_MODEL_FILE} is not one that VNA.save writes"
  return None


class _Shapes(NamedTuple):
  """What building a model needs of a dataset."""
  neuron_counts: tuple[int, ...]
  image_shape: tuple[int, ...]


def _complete_model_config(saved: dict):
  """The saved config as a ConfigDict, its model blocks completed with the defaults of
  configs/common.py: models saved before every model field was written out left the
  fields at their defaults out, and those defaults have not changed since."""
  import ml_collections
  from jaxvna.configs import common
  config = ml_collections.ConfigDict(saved)
  model = config.model
  image = model.image_tower.to_dict()
  defaults = common.IMAGE_TOWERS.get(image.get("type"), {})
  image = {**defaults, **{k: v for k, v in image.items() if k in defaults or k == "type"}}
  neural = {**common.NEURAL_TOWER, **model.neural_tower.to_dict()}
  rest = {k: v for k, v in model.items() if k not in ("image_tower", "neural_tower")}
  config.model = ml_collections.ConfigDict(
      {**common.MODEL, **rest, "image_tower": image, "neural_tower": neural})
  return config


def _is_saved_model(path: pathlib.Path) -> bool:
  """Whether the folder `path` holds a model `save` wrote, and nothing `save` does not write."""
  return not path.is_symlink() and path.is_dir() and _why_not_a_model(path) is None


class VNA:
  """Visual-neural alignment of images and responses, fitted on in-memory arrays.

  Attributes after `fit` or `load`: `config_` (the ConfigDict trained), `params_`,
  `neuron_counts_` (K of each subject), `image_shape_` (H, W, C), `subject_ids_`.
  """

  def __init__(self, steps: int = 600, batch_size: int = 256, embed_dim: int = 128,
               image_tower: str = "cnn", seed: int = 0, workdir: str | os.PathLike | None = None,
               verbose: bool = False, **config_overrides):
    """Configures the estimator; nothing is trained before `fit`.

    Args:
      steps: optimisation steps.
      batch_size: global batch (a multiple of the number of devices).
      embed_dim: D, the width of both embeddings.
      image_tower: "cnn" or "mlp".
      seed: initialisation, batch order and training subset.
      workdir: keeps checkpoints, metrics.jsonl and config.json; `fit` resumes an
        interrupted fit there and refuses a workdir of other data or settings. None: a
        temporary folder, removed after `fit`.
      verbose: show a progress bar while fitting.
      **config_overrides: any other field of configs/vna_sim.py, as "a.b" or a__b.
    """
    from jaxvna.configs import common, vna_sim
    if image_tower not in ("cnn", "mlp"):
      raise ValueError(f"image_tower: expected 'cnn' or 'mlp', got {image_tower!r}")
    config = vna_sim.get_config("vna")
    config.seed = seed
    config.train.steps = steps
    config.train.batch_size = batch_size
    config.train.progress_bar = verbose
    config.model.embed_dim = embed_dim
    # The chosen tower at its defaults, with vna_sim.py's widths after the pixels.
    config.model.image_tower = common.image_tower(
        image_tower, hidden=config.model.image_tower.hidden)
    config.eval.gabor_ridge = False
    if "method" in config_overrides:
      raise ValueError(f"method: the VNA estimator trains {config.method!r}; it cannot be "
                       "overridden")
    for key, value in config_overrides.items():
      _set_field(config, key, value)
    self.config = config
    self.workdir = workdir

  # ---------------------------------------------------------------- fitting

  def fit(self, images, responses, subject_ids: Sequence[Any] | None = None,
          split=None) -> "VNA":
    """Trains on the "train" images of every subject (all of them when `split` is None).

    Args:
      images: (N, H, W[, C]) uint8 or float in [0, 1], or a list, one per subject.
      responses: (N, K) or (N, R, K) (NaN for unrecorded repeats), or a list, one per
        subject; subjects may have different K.
      subject_ids: names of the subjects, for `transform_responses(subject=...)`;
        default 0, 1, ...
      split: optional (N,) split per image ("train", "validation", "test" or 0-2), in
        the structure of `images`.

    Returns:
      self.
    """
    from jaxvna.training import train
    dataset = arrays_to_dataset(images, responses, subject_ids, split)
    missing = [r.name for r in dataset.recordings if not r.indices("train").size]
    if missing:
      raise ValueError(f"split: subjects {missing} have no 'train' images")
    config = self.config.copy_and_resolve_references()
    with config.unlocked():
      config.data.kind = "arrays"
      config.data.kwargs = {"fingerprint": _fingerprint(dataset)}
    if self.workdir is None:
      with tempfile.TemporaryDirectory(prefix="jaxvna_fit_") as workdir:
        model, params, _ = train.train(config, workdir, dataset=dataset)
    else:
      model, params, _ = train.train(config, self.workdir, dataset=dataset)
    self._set_fitted(config, model, params, dataset.neuron_counts, dataset.image_shape,
                     [r.name for r in dataset.recordings])
    return self

  def _set_fitted(self, config, model, params, neuron_counts, image_shape, subject_ids):
    import jax
    self.config_ = config
    self.model_ = model
    self.params_ = params
    self.neuron_counts_ = tuple(int(k) for k in neuron_counts)
    self.image_shape_ = tuple(int(s) for s in image_shape)
    self.subject_ids_ = list(subject_ids)
    self._embed_images = jax.jit(
        lambda p, x: model.apply({"params": p}, x, method=model.embed_images))
    self._embed_responses = jax.jit(
        lambda p, r, s: model.apply({"params": p}, r, s, method=model.embed_responses))

  def _check_fitted(self):
    if not hasattr(self, "params_"):
      raise RuntimeError("VNA: call fit() (or VNA.load()) first")

  # ---------------------------------------------------------------- embeddings

  def transform_images(self, images) -> np.ndarray:
    """(N, H, W[, C]) uint8 or float [0, 1] -> (N, D) float32 unit-norm image embeddings."""
    self._check_fitted()
    x = _images(images, "images")
    if x.shape[1:] != self.image_shape_:
      raise ValueError(f"images: expected images of shape {self.image_shape_} (as in fit), "
                       f"got {x.shape[1:]}")
    from jaxvna.evaluation import discriminative
    return discriminative.batched_apply(lambda batch: self._embed_images(self.params_, batch),
                                        x, batch_size=_EMBED_BATCH)

  def transform_responses(self, responses, subject=0) -> np.ndarray:
    """(N, K) or (N, R, K) responses of one subject -> (N, D) float32 unit-norm embeddings.

    Repeats are averaged over the recorded (non-NaN) ones first.

    Args:
      responses: the subject's responses, K = its neuron count in fit.
      subject: the subject's name in fit's `subject_ids`, or its position.
    """
    self._check_fitted()
    index = self._subject_index(subject)
    r = _responses(responses, "responses")
    k = self.neuron_counts_[index]
    if r.shape[2] != k:
      raise ValueError(f"responses: subject {self.subject_ids_[index]!r} has {k} neurons, "
                       f"got responses of shape {np.shape(responses)}")
    nan = np.isnan(r)
    _refuse_rows(np.isinf(r).any(axis=(1, 2)), "infinite values")
    # NaN only marks whole unrecorded repeats; a NaN among recorded values would make
    # the repeat average, and so the embedding, NaN.
    _refuse_rows((nan.any(axis=2) & ~nan.all(axis=2)).any(axis=1),
                 "NaN in some but not all neurons of a repeat (NaN may only fill whole "
                 "unrecorded repeats)")
    recorded = ~nan.all(axis=2, keepdims=True)
    _refuse_rows(~recorded.any(axis=(1, 2)), "no recorded repeat (all NaN)")
    mean = np.where(recorded, r, 0).sum(axis=1) / recorded.sum(axis=1)
    from jaxvna.evaluation import discriminative
    padded = discriminative.padded(mean.astype(np.float32), max(self.neuron_counts_))
    return discriminative.batched_apply(
        lambda r, s: self._embed_responses(self.params_, r, s), padded,
        np.full(len(padded), index, np.int32), batch_size=_EMBED_BATCH)

  def _subject_index(self, subject) -> int:
    """A name of fit's `subject_ids`, else a position."""
    if str(subject) in self.subject_ids_:
      return self.subject_ids_.index(str(subject))
    if isinstance(subject, (int, np.integer)) and 0 <= subject < len(self.neuron_counts_):
      return int(subject)
    raise ValueError(f"subject: unknown {subject!r}; expected an index < "
                     f"{len(self.neuron_counts_)} or one of {self.subject_ids_}")

  def score(self, images, responses, subject=0, n_way=10, task: str = "decoding",
            draws: int = 200, seed: int = 0) -> float:
    """N-way top-1 identification accuracy of held-out (image, response) pairs.

    Decoding: each response picks its image among N candidates (the true one and N-1
    drawn at random); encoding: each image picks its response. Candidates are compared
    by the cosine of the embeddings; the accuracy is the mean over `draws` draws
    (`jaxvna.evaluation.identification.nway_accuracy`). Chance is 1/N.

    Args:
      images: (N, H, W[, C]) images; responses: (N, K) or (N, R, K) of `subject`.
      n_way: candidates per query (>= 2), or "all".
      task: "decoding" or "encoding".
    """
    from jaxvna.evaluation import identification
    image_repr = self.transform_images(images)
    response_repr = self.transform_responses(responses, subject)
    if len(image_repr) != len(response_repr):
      raise ValueError(f"responses: {len(response_repr)} rows for {len(image_repr)} images")
    similarity, targets, groups = identification.discriminative_similarity(
        response_repr, image_repr, task=task, metric="cosine")
    return identification.nway_accuracy(similarity, n_way, draws=draws, topk=(1,), seed=seed,
                                        targets=targets, candidate_groups=groups)["top1"]

  # ---------------------------------------------------------------- persistence

  def save(self, path: str | os.PathLike) -> None:
    """Writes the model to the folder `path`: `model.json` (config, neuron counts, image
    shape, subject names) and `params/` (an orbax checkpoint with checksums).

    Both are written to a temporary folder beside `path` and renamed into place, so `path`
    never holds half a model. `path` may be missing, an empty folder, or a model that
    `save` wrote (replaced); anything else is left as it was.

    Raises:
      RefusedPathError: `path` is a file, or a folder holding anything but a saved model.
    """
    from jaxvna.training import checkpoint
    self._check_fitted()
    meta = {"format": _MODEL_FORMAT, "config": json.loads(self.config_.to_json()),
            "neuron_counts": self.neuron_counts_, "image_shape": self.image_shape_,
            "subject_ids": self.subject_ids_}

    def build(tmp: pathlib.Path):
      with checkpoint.Checkpointer(tmp / _PARAMS_DIR, max_to_keep=1, async_save=False) as ckpt:
        ckpt.save(0, self.params_, {}, force=True)
      files.write_json(tmp / _MODEL_FILE, meta)

    files.replace_dir(pathlib.Path(path).absolute(), build, is_ours=_is_saved_model,
                      what=f"a saved jaxvna model ({_MODEL_FILE} and {_PARAMS_DIR}/ only)",
                      explain=lambda p: _why_not_a_model(p) if p.is_dir() else None)

  @classmethod
  def load(cls, path: str | os.PathLike) -> "VNA":
    """A fitted VNA from a folder written by `save`, on the first local device.

    Raises:
      FileNotFoundError: no model.json in `path`.
      DataError: model.json is unreadable, not JSON, or lacks a field; the message names it.
    """
    import jax
    import jax.numpy as jnp
    from jaxvna import registry
    from jaxvna.training import checkpoint
    path = pathlib.Path(path)
    if not (path / _MODEL_FILE).is_file():
      raise FileNotFoundError(f"{path}: no saved VNA model ({_MODEL_FILE} is missing)")
    meta = _read_model_file(path / _MODEL_FILE)
    config = _complete_model_config(meta["config"])
    counts, shape = tuple(meta["neuron_counts"]), tuple(meta["image_shape"])
    model = registry.get(config.method).build_model(config, _Shapes(counts, shape))
    rng = jax.random.key(0)
    abstract = jax.eval_shape(
        lambda: model.init({"params": rng, "dropout": rng}, jnp.zeros((1, *shape), jnp.uint8),
                           jnp.zeros((1, max(counts)), jnp.float32), jnp.zeros((1,), jnp.int32),
                           train=False)["params"])
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                            abstract)
    with checkpoint.Checkpointer(path / _PARAMS_DIR, max_to_keep=None, create=False) as ckpt:
      restored = ckpt.restore(abstract)
    if restored is None:
      raise FileNotFoundError(f"{path / _PARAMS_DIR}: no saved parameters")
    estimator = cls.__new__(cls)
    estimator.config, estimator.workdir = config, None
    estimator._set_fitted(config, model, restored[1], counts, shape, meta["subject_ids"])
    return estimator
