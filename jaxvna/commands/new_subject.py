"""How much data a new subject needs: held-out accuracy against the images of it used.

`run(config, workdir)` (the `jaxvna new_subject` command) holds the recordings
`new_subject.held_out` out of training and draws, for each held-out subject and each
method of `new_subject.methods`, its accuracy against k, the number of the subject's
training-split images the method may use (`new_subject.image_counts`, -1 = all of them).
The k images are the first k of one seeded permutation of the subject's training images,
so a smaller k's images are a subset of a larger one's.

  vna    trained once on the other subjects (workdir/vna). For each k the model is rebuilt
         for the new subject's neurons with a fresh read-in (the neural tower's linear
         `readin`); the read-in alone is fitted on the k images, every other parameter
         (both towers' shared layers, the temperature) frozen, with the run's contrastive
         loss (`loss.type`): `readin_steps` AdamW steps (`readin_learning_rate`, cosine
         decay; `optim.weight_decay`, `optim.clip_norm`), each on min(train.batch_size, k)
         distinct images with one recorded trial each (`data.response_mode`). The frozen
         image embeddings are computed once. k = 0 has no read-in and is omitted.
  mivae  trained once without the held-out subjects (workdir/mivae, with
         `mivae.holdout_subjects` set to them). A new subject is embedded zero-shot from
         its neuron table (identity features and per-neuron standardisation,
         `neuron_features.neuron_table`) computed from its k images; no parameter
         changes, so k = all is `jaxvna train`'s zero_shot. With "tuning" features
         (computed from responses) k = 0 is omitted; with response-free ones ("coords")
         k = 0 standardises every neuron by the training subjects' median statistics.

A method whose config block is missing (miVAE's `mivae`) is skipped with a note. Finished
trainings are reused (each run resumes from its checkpoint; its config records the
held-out names, so a workdir trained for other ones is refused without --force); the
points are recomputed.

Accuracy: discriminative decoding and encoding of the subject's `eval.split` images from
trial-averaged responses (`discriminative.evaluate_model`), N-way top-1 for each N of
`eval.n_ways`. The 95% interval is over candidate draws: it does not cover the choice of
test images, of the k images, or of training seeds.

Counts larger than a subject's training images are dropped for that subject (the k = all
point covers them) and listed under `omitted` with the reason.

Settings, `config.new_subject` (defaults: `common.new_subject()` in configs/common.py):
  methods          curves to draw: "vna", "mivae".
  held_out         recording names held out of training; () = `mivae.holdout_subjects`
                   where the config has a miVAE block, else the last recording.
  image_counts     k values: 0, -1 (all) or at least 3 (a tuning fingerprint correlates
                   over images, a contrastive batch needs several).
  readin_steps, readin_learning_rate   VNA's read-in fit.
  seed             the image permutations and the read-in's initialisation.
  n_way            the N of the plot and the printed table (one of `eval.n_ways`).

Outputs in workdir: new_subject.csv (method, subject, images, task, n_way, top1, ci_low,
ci_high), new_subject.json (the settings, then every point by method and subject) and
new_subject.png (top-1 at N = `n_way` against images, one panel per task, 95% bands,
chance dashed).
"""

from __future__ import annotations

import csv
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxvna import errors, files, losses, registry
from jaxvna.data import Dataset, Recording, pipeline
from jaxvna.evaluation import discriminative

TASKS = ("decoding", "encoding")
ALL = -1  # image_counts entry meaning every training image of the subject
# The VNA parameters that depend on the subject's neurons: refitted, all others frozen.
READIN = ("neural_tower", "readin")
# miVAE neuron feature kinds computed without the subject's responses.
RESPONSE_FREE_FEATURES = ("coords",)
# The config block each method needs beyond the shared ones.
METHOD_BLOCKS = {"vna": None, "mivae": "mivae"}


# ----------------------------------------------------------------------------
# Settings and plan
# ----------------------------------------------------------------------------

def settings_of(config) -> ml_collections.ConfigDict:
  """`config.new_subject`, checked.

  Raises:
    errors.ConfigError: a missing block, an unknown method, count or n_way.
  """
  settings = config.get("new_subject")
  if settings is None:
    raise errors.ConfigError("config.new_subject: missing; add `c.new_subject = "
                             "common.new_subject()` to the config (configs/common.py)")
  unknown = [m for m in settings.methods if m not in METHOD_BLOCKS]
  if unknown or not settings.methods:
    raise errors.ConfigError(f"config.new_subject.methods: expected some of "
                             f"{tuple(METHOD_BLOCKS)}, got {tuple(settings.methods)}")
  counts = tuple(settings.image_counts)
  bad = [k for k in counts if not isinstance(k, int) or not (k in (0, ALL) or k >= 3)]
  if bad or not counts:
    raise errors.ConfigError(f"config.new_subject.image_counts: expected 0, -1 (all) or "
                             f"integers >= 3, got {counts}")
  if str(settings.n_way) not in map(str, config.eval.n_ways):
    raise errors.ConfigError(f"config.new_subject.n_way={settings.n_way!r}: not one of "
                             f"config.eval.n_ways {tuple(config.eval.n_ways)}")
  if not settings.readin_learning_rate > 0:
    raise errors.ConfigError(f"config.new_subject.readin_learning_rate="
                             f"{settings.readin_learning_rate!r}: expected a number > 0")
  return settings


def held_out_names(config, settings, dataset: Dataset) -> tuple[str, ...]:
  """The held-out recordings (`new_subject.held_out`, or its default), checked."""
  names = [rec.name for rec in dataset.recordings]
  held_out, field = tuple(settings.held_out), "config.new_subject.held_out"
  if not held_out and "mivae" in config:
    held_out, field = tuple(config.mivae.holdout_subjects), "config.mivae.holdout_subjects"
  elif not held_out:
    held_out = (names[-1],)
  if not held_out:
    raise errors.ConfigError(f"{field}: empty; name the recordings to hold out of training")
  unknown = [h for h in held_out if h not in names]
  if unknown:
    raise errors.ConfigError(f"{field}: {unknown} are not recordings of {dataset.name} "
                             f"({names})")
  if len(set(held_out)) == len(names):
    raise errors.ConfigError(f"{field}: every recording of {dataset.name} is held out; "
                             "none is left to train on")
  return tuple(dict.fromkeys(held_out))


def plan_counts(image_counts, num_train: int) -> tuple[list[int], list[dict]]:
  """(the ks of one subject, sorted, ALL resolved; [{"images", "reason"}] dropped)."""
  ks, omitted = set(), []
  for k in image_counts:
    if k == ALL or k == num_train:
      ks.add(num_train)
    elif k > num_train:
      omitted.append({"images": int(k), "reason": f"the subject has {num_train} training "
                                                  "images (the 'all' point uses them)"})
    else:
      ks.add(int(k))
  return sorted(ks), omitted


def image_order(rec: Recording, seed: int, position: int) -> np.ndarray:
  """A seeded permutation of the recording's training images; k images = its first k."""
  rng = np.random.default_rng([seed, position])
  return rng.permutation(rec.indices("train"))


def method_config(config, method: str, held_out: tuple[str, ...]):
  """The run config of one method: `config` with `method` set and `new_subject` reduced to
  the held-out names (a finished training is reused whatever the other settings, never for
  other held-out subjects), miVAE's held-out subjects set to them."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.method = method
    c.new_subject = ml_collections.ConfigDict({"held_out": tuple(held_out)})
    if "mivae" in c:
      c.mivae.holdout_subjects = tuple(held_out)
  return c


# ----------------------------------------------------------------------------
# VNA: a fresh read-in on frozen towers
# ----------------------------------------------------------------------------

def subtree(tree: dict, path: tuple[str, ...]):
  for key in path:
    tree = tree[key]
  return tree


def with_subtree(tree: dict, path: tuple[str, ...], value) -> dict:
  """A copy of the nested dict `tree` with the entry at `path` replaced by `value`."""
  if not path:
    return value
  return {**tree, path[0]: with_subtree(tree[path[0]], path[1:], value)}


def contrastive_loss(config, img_emb, neu_emb, temperature, bias) -> jax.Array:
  """VNA's loss (`loss.type`) on one device, from L2-normalised (B, D) embeddings."""
  kind = config.loss.type
  if kind == "clip":
    return losses.clip_loss(img_emb, neu_emb, temperature, impl=config.loss.impl)
  if kind == "sigmoid":
    return losses.sigmoid_loss(img_emb, neu_emb, temperature, bias, impl=config.loss.impl)
  raise errors.ConfigError(f"config.loss.type: unknown {kind!r}; expected clip|sigmoid")


class NewReadin:
  """VNA rebuilt for one new subject on a trained model's frozen parameters.

  `fit(indices)` trains a fresh read-in on those images of the subject; `represent(readin)`
  is the `discriminative.Represent` of the model with that read-in. The frozen image
  embeddings of the subject's images are computed once, on construction.
  """

  def __init__(self, config, params, rec: Recording, settings, *, seed: int):
    method = registry.get(config.method)
    self.config, self.rec, self.settings, self.seed = config, rec, settings, seed
    self.dataset = Dataset(rec.name, (rec,))
    model = self.model = method.build_model(config, self.dataset, None)
    key = jax.random.key(seed)
    args = method.init_args(config, self.dataset, None)
    fresh = jax.jit(lambda key: model.init({"params": key, "dropout": key, "latent": key},
                                           *args, train=False)["params"])(key)
    self.initial = subtree(fresh, READIN)
    # The trained read-in is for other neurons; every other shape must match.
    self.frozen = with_subtree(params, READIN, self.initial)
    shapes = lambda tree: {jax.tree_util.keystr(path): np.shape(leaf) for path, leaf
                           in jax.tree_util.tree_flatten_with_path(tree)[0]}
    ours, theirs = shapes(self.frozen), shapes(fresh)
    mismatched = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    if mismatched:
      raise ValueError(f"new_subject: the {config.method} model rebuilt for {rec.name} "
                       f"differs from the trained one beyond {'/'.join(READIN)}: {mismatched}")

    # Frozen parameters are arguments, not constants of the compiled programs.
    def apply(frozen, readin, *args, **kwargs):
      return model.apply({"params": with_subtree(frozen, READIN, readin)}, *args, **kwargs)
    self._embed_images = jax.jit(lambda frozen, x: model.apply(
        {"params": frozen}, x, method=model.embed_images))
    self._embed_responses = jax.jit(lambda frozen, readin, r: apply(
        frozen, readin, r, jnp.zeros(r.shape[:1], jnp.int32), method=model.embed_responses))

    def loss(readin, frozen, img_emb, responses, rng):
      neu = apply(frozen, readin, responses, jnp.zeros(responses.shape[:1], jnp.int32),
                  train=True, rngs={"dropout": rng}, method=model.embed_responses)
      temperature, bias = apply(frozen, readin, method=lambda m: (m.temperature(), m.bias))
      return contrastive_loss(config, img_emb, neu, temperature, bias)

    steps = settings.readin_steps
    self.tx = optax.chain(
        optax.clip_by_global_norm(config.optim.clip_norm),
        optax.adamw(optax.cosine_decay_schedule(settings.readin_learning_rate, steps, 0.01),
                    weight_decay=config.optim.weight_decay))

    def step(readin, opt_state, frozen, img_emb, responses, rng):
      # Gradients of the read-in only: the frozen parameters are not differentiated.
      value, grads = jax.value_and_grad(loss)(readin, frozen, img_emb, responses, rng)
      updates, opt_state = self.tx.update(grads, opt_state, readin)
      return optax.apply_updates(readin, updates), opt_state, value
    self._step = jax.jit(step)

    from jaxvna.models import inputs
    embed = lambda idx: discriminative.batched_apply(
        lambda x: self._embed_images(self.frozen, x),
        inputs.recording_images(config, rec.subset(idx)))
    self.train_images = {int(i): row for i, row in zip(
        rec.indices("train"), embed(rec.indices("train")))}
    self.eval_images = embed(rec.indices(config.eval.split))

  def fit(self, indices: np.ndarray) -> tuple[Any, np.ndarray]:
    """(read-in params, (readin_steps,) losses) fitted on the subject's images `indices`."""
    k = len(indices)
    batch = min(self.config.train.batch_size, k)
    img_emb = np.stack([self.train_images[int(i)] for i in indices])
    responses = self.rec.responses[indices]
    order, counts = pipeline.recorded_repeats(responses)
    mean = self.rec.mean_responses[indices]
    trial = self.config.data.response_mode == "trial"
    rng = np.random.default_rng([self.seed, k])
    key = jax.random.key(self.seed)
    readin, opt_state = self.initial, self.tx.init(self.initial)
    values = []
    for s in range(self.settings.readin_steps):
      rows = rng.choice(k, batch, replace=False)
      if trial:
        picks = rng.integers(counts[rows])
        resp = responses[rows, order[rows, picks]]
      else:
        resp = mean[rows]
      readin, opt_state, value = self._step(readin, opt_state, self.frozen, img_emb[rows],
                                            resp, jax.random.fold_in(key, s))
      values.append(value)
    return readin, np.asarray(jax.device_get(values))

  def represent(self, readin) -> discriminative.Represent:
    """The model with `readin` on the subject's held-out split (`Represent`)."""
    def represent(held_out, trials, subject, k_max):
      del subject, k_max  # one subject, no padding
      embed = lambda r: discriminative.batched_apply(
          lambda x: self._embed_responses(self.frozen, readin, x), r)
      return dict(image_repr=self.eval_images, metric="cosine",
                  mean_repr=embed(held_out.mean_responses), trial_repr=embed(trials))
    return represent

  def evaluate(self, readin) -> dict:
    """`discriminative.evaluate_model`'s per-subject report of the model with `readin`."""
    report = discriminative.evaluate_model(self.config, self.dataset, self.represent(readin))
    return report["per_subject"][self.rec.name]


def vna_points(config, model, params, base: Dataset, rec: Recording, order, ks, settings,
               advance) -> tuple[list[dict], list[dict]]:
  """(points, omitted) of VNA's curve for the new subject `rec`."""
  del model, base
  points, omitted = [], []
  fitter = None
  for k in ks:
    if k == 0:
      omitted.append({"images": 0, "reason": "VNA has no read-in for a subject without "
                                             "its responses"})
    else:
      fitter = fitter or NewReadin(config, params, rec, settings, seed=settings.seed)
      readin, values = fitter.fit(order[:k])
      points.append(point(k, len(order), fitter.evaluate(readin),
                          readin_loss=[float(values[0]), float(values[-1])]))
    advance()
  return points, omitted


# ----------------------------------------------------------------------------
# miVAE: zero-shot from k images' neuron table
# ----------------------------------------------------------------------------

def mivae_points(config, model, params, base: Dataset, rec: Recording, order, ks, settings,
                 advance) -> tuple[list[dict], list[dict]]:
  """(points, omitted) of miVAE's zero-shot curve for the new subject `rec`."""
  del settings
  from jaxvna.methods.mivae import evaluation as mivae_evaluation
  from jaxvna.methods.mivae import neuron_features
  kinds = tuple(config.mivae.neuron_features)
  needs_responses = [kind for kind in kinds if kind not in RESPONSE_FREE_FEATURES]
  rows, used, omitted = [], [], []
  for k in ks:
    if k > 0:
      # The table of `split="train"` reads only the first k images' responses.
      rows.append(neuron_features.neuron_table([rec.subset(order[:k])], kinds))
      used.append(k)
    elif needs_responses:
      omitted.append({"images": 0, "reason": f"miVAE's neuron features {needs_responses} "
                                             "are computed from the subject's responses"})
      advance()
    else:
      rows.append(response_free_table(rec, kinds, neuron_features.neuron_table(base, kinds)))
      used.append(0)
  if not rows:
    return [], omitted
  table = {key: np.concatenate([r[key] for r in rows]) for key in rows[0]}
  enc = mivae_evaluation.Encoders(model, params, table,
                                  mivae_evaluation.axis_rotation(config, params, base))
  points = []
  for row, k in enumerate(used):
    reprs = mivae_evaluation.subject_representations(enc, rec, row, config.eval.split)
    points.append(point(k, len(order), discriminative.score_representations(
        reprs, config.eval)))
    advance()
  return points, omitted


def response_free_table(rec: Recording, kinds, train_table: dict) -> dict:
  """One subject's neuron table without its responses: its response-free features, and the
  training subjects' median standardisation for every neuron."""
  from jaxvna.methods.mivae import neuron_features
  features = neuron_features.recording_features(rec, kinds)
  k = rec.num_neurons
  mask = train_table["mask"]
  return {"features": features[None].astype(np.float32),
          "center": np.full((1, k), np.median(train_table["center"][mask]), np.float32),
          "scale": np.full((1, k), np.median(train_table["scale"][mask]), np.float32),
          "mask": np.ones((1, k), bool)}


CURVES = {"vna": vna_points, "mivae": mivae_points}


def point(k: int, num_train: int, report: dict, **extra) -> dict:
  """One point of a curve: images used, and the top-1 of each task and N."""
  keep = ("top1", "top1_ci95", "chance_top1", "num_candidates")
  return {"images": k, "all": k == num_train, **extra,
          **{task: {n: {key: report[task][n][key] for key in keep} for n in report[task]}
             for task in TASKS}}


# ----------------------------------------------------------------------------
# The study
# ----------------------------------------------------------------------------

def run(config, workdir, *, force: bool = False) -> dict:
  """`jaxvna new_subject`: trains each method without the held-out subjects, draws every
  curve, writes the three files.

  Returns:
    the content of workdir/new_subject.json.
  """
  from tqdm import auto as tqdm
  from jaxvna.training import distributed, preflight, provenance, train
  started = time.time()
  settings = settings_of(config)
  workdir = pathlib.Path(workdir)
  dataset = train.load_dataset(config)
  held_out = held_out_names(config, settings, dataset)
  preflight.check_evaluation_data(config, dataset.select(held_out))
  base = dataset.select([r.name for r in dataset.recordings if r.name not in held_out])
  skipped = {m: f"the config has no `{METHOD_BLOCKS[m]}` block (use e.g. "
                f"{registry.get(m).example_config})"
             for m in settings.methods if METHOD_BLOCKS[m] and METHOD_BLOCKS[m] not in config}
  configs = {m: method_config(config, m, held_out) for m in settings.methods
             if m not in skipped}
  if not configs:
    raise errors.ConfigError(f"config.new_subject.methods: none can run on this config "
                             f"({'; '.join(f'{m}: {r}' for m, r in skipped.items())})")
  for c in configs.values():  # before any training: a method that cannot run fails now
    preflight.check_training_data(c, base, jax.device_count())
  workdir.mkdir(parents=True, exist_ok=True)
  trained = {}
  for m, c in configs.items():
    model, params, _ = train.train(c, workdir / m, dataset=base, force=force)
    # On one device: the points are small computations, not worth every device's copy.
    trained[m] = model, jax.device_put(train.local_copy(params), jax.local_devices()[0])

  plans = {}
  for position, name in enumerate(held_out):
    rec = dataset[name]
    order = image_order(rec, settings.seed, position)
    plans[name] = (rec, order, *plan_counts(settings.image_counts, len(order)))
  curves = {}
  total = len(configs) * sum(len(p[2]) for p in plans.values())
  with tqdm.tqdm(total=total, desc="new_subject",
                 disable=not config.train.progress_bar) as bar:
    for m, c in configs.items():
      curves[m] = {}
      for name, (rec, order, ks, dropped) in plans.items():
        points, omitted = CURVES[m](c, *trained[m], base, rec, order, ks, settings,
                                    lambda: bar.update(1))
        curves[m][name] = {"train_images": len(order), "points": points,
                           "omitted": dropped + omitted}
  out = {"dataset": dataset.name, "held_out": list(held_out),
         "trained_on": [r.name for r in base.recordings],
         "settings": settings.to_dict() | {"held_out": list(held_out)},
         "accuracy": "N-way top-1 of discriminative decoding and encoding of the subject's "
                     f"'{config.eval.split}' images, trial-averaged responses; 95% CI over "
                     "candidate draws",
         "n_way": str(settings.n_way), "skipped_methods": skipped,
         "methods": curves}
  out = jsonable(out) | {"provenance": provenance.record(config, dataset, started=started)}
  if not distributed.is_primary():
    return out
  files.write_json(workdir / "new_subject.json", out)
  write_csv(out, workdir / "new_subject.csv")
  plot(out, workdir / "new_subject.png", title=f"{dataset.name}: new subjects")
  print(summary_table(out))
  for m, reason in skipped.items():
    print(f"skipped {m}: {reason}")
  print(f"\nnew_subject: {workdir / 'new_subject.json'}   {workdir / 'new_subject.csv'}   "
        f"{workdir / 'new_subject.png'}")
  return out


def jsonable(tree):
  """`tree` with tuples as lists and numpy scalars as Python numbers."""
  if isinstance(tree, dict):
    return {str(k): jsonable(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [jsonable(v) for v in tree]
  if isinstance(tree, np.generic):
    return tree.item()
  return tree


def rows_of(out: dict):
  """(method, subject, point) for every point of every curve."""
  for m, subjects in out["methods"].items():
    for name, curve in subjects.items():
      for p in curve["points"]:
        yield m, name, p


def write_csv(out: dict, path) -> None:
  fields = ("method", "subject", "images", "task", "n_way", "top1", "ci_low", "ci_high")

  def write(f):
    writer = csv.writer(f)
    writer.writerow(fields)
    for m, name, p in rows_of(out):
      for task in TASKS:
        for n, r in p[task].items():
          writer.writerow([m, name, p["images"], task, n, f"{r['top1']:.6f}",
                           f"{r['top1_ci95'][0]:.6f}", f"{r['top1_ci95'][1]:.6f}"])

  files.atomic_write(path, write, "w")


def summary_table(out: dict) -> str:
  n = out["n_way"]
  lines = [f"{n}-way top-1 [95% CI]",
           f"{'method':<8}{'subject':<12}{'images':>7}   {'decoding':<22}{'encoding':<22}"]
  cell = lambda r: f"{r['top1']:.3f} [{r['top1_ci95'][0]:.2f}, {r['top1_ci95'][1]:.2f}]"
  for m, name, p in rows_of(out):
    images = f"{p['images']}" + ("*" if p["all"] else "")
    lines.append(f"{m:<8}{name:<12}{images:>7}   {cell(p['decoding'][n]):<22}"
                 f"{cell(p['encoding'][n]):<22}")
  for m, subjects in out["methods"].items():
    for name, curve in subjects.items():
      for o in curve["omitted"]:
        lines.append(f"{m:<8}{name:<12}{o['images']:>7}   omitted: {o['reason']}")
  return "\n".join(lines + ["* all of the subject's training images"])


def plot(out: dict, path, *, title: str = "") -> None:
  """PNG: top-1 at N = out["n_way"] against images, one line and 95% band per method and
  subject, one panel per task, chance dashed."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib import ticker
  n = out["n_way"]
  fig, axes = plt.subplots(1, len(TASKS), figsize=(5 * len(TASKS), 4), sharey=True)
  ticks, chance = set(), None
  for ax, task in zip(axes, TASKS):
    i = 0
    for m, subjects in out["methods"].items():
      for name, curve in subjects.items():
        pts = curve["points"]
        if not pts:
          continue
        x = [p["images"] for p in pts]
        y = [p[task][n]["top1"] for p in pts]
        lo, hi = zip(*(p[task][n]["top1_ci95"] for p in pts))
        ax.plot(x, y, marker="o", color=f"C{i}", label=f"{m} {name}")
        ax.fill_between(x, lo, hi, color=f"C{i}", alpha=0.2)
        ticks |= set(x)
        chance = pts[0][task][n]["chance_top1"]
        i += 1
    if chance is not None:
      ax.axhline(chance, color="k", ls="--", lw=1, label="chance")
    positive = [t for t in ticks if t > 0]
    if positive and len(positive) < len(ticks):  # a 0 point: linear up to the smallest k
      ax.set_xscale("symlog", linthresh=min(positive), linscale=0.5)
    elif positive:
      ax.set_xscale("log")
    ax.set_xticks(sorted(ticks))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.set_xlabel("images of the new subject")
    ax.set_title(f"{task}, {n}-way")
  axes[0].set_ylabel("top-1 accuracy")
  axes[-1].legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  files.save_figure(fig, path, dpi=120)
  plt.close(fig)
