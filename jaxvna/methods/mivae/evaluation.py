"""Evaluation of a trained miVAE: identification within and across subjects, and, on the
simulator, identifiability and attribution against the truth.

Reported under `results.mivae` (see `evaluate`):
  decoding / encoding / single_trial   discriminative scores on the TRAINING subjects'
                                       held-out images (cosine of posterior means of
                                       z_x^c and z_y^c, each set centred on its mean:
                                       `subject_representations`), mean over subjects;
  zero_shot                            the same on subjects held out of training, embedded
                                       from their neuron features with no parameter update;
  zero_shot_ratio                      zero-shot / within-subject N-way top-1 (N =
                                       mivae.ratio_n_way, mean of decoding and encoding);
  zero_shot_ratio_ci95                 its 95% bootstrap interval over the held-out
                                       images (`ratio_ci`);
  held_out_elbo                        neural ELBO per neuron and trial on held-out images
                                       of the training subjects (nats; higher is better);
  mcc, mcc_image, mcc_zero_shot        mean correlation coefficient (Hungarian matching)
                                       of z_x^c (trial-averaged responses), of z_y^c, and of
                                       z_x^c of held-out subjects against the true latents;
  rf_corr                              pixel attribution of each matched z_y^c dimension vs
                                       the true receptive field of its latent factor, both
                                       Gaussian-smoothed by `mivae.map_smoothing` pixels;
  responsive_auc                       neuron attribution (summed over latents) vs the
                                       true responsive mask, ROC AUC, mean over subjects;
  neuron_groups                        sizes of the k-means groups of neuron profiles.
Figures: `mivae_pixel_maps.png` (attribution per latent over the truth) and
`mivae_neuron_groups.png` in the workdir.
"""

from __future__ import annotations

import pathlib

import numpy as np
from scipy import ndimage

from jaxvna import errors
from jaxvna.data import Dataset
from jaxvna.evaluation import discriminative, identifiability, identification, targets
from jaxvna.methods.mivae import attribution, neuron_features
from jaxvna.methods.mivae import modules as mivae
from jaxvna.models import inputs


def split_subjects(config, dataset: Dataset) -> tuple[Dataset, tuple[str, ...]]:
  """(training dataset, held-out names) from `config.mivae.holdout_subjects`."""
  names = [rec.name for rec in dataset.recordings]
  holdout = tuple(config.mivae.holdout_subjects)
  unknown = [h for h in holdout if h not in names]
  if unknown:
    raise errors.ConfigError(f"config.mivae.holdout_subjects: {unknown} are not recordings of "
                     f"{dataset.name} ({names})")
  kept = [n for n in names if n not in holdout]
  if not kept:
    raise errors.ConfigError("config.mivae.holdout_subjects: every subject is held out; none to train on")
  return dataset.select(kept), holdout


def neuron_table(config, dataset: Dataset, train_names) -> dict:
  """`neuron_features.neuron_table` of every recording of `dataset` with the kinds of
  `mivae.neuron_features`.

  With `mivae.shuffle_neurons` (the neuron null control) the identity features are
  `neuron_features.shuffled_across_subjects`, pooled once over the recordings named in
  `train_names` (in dataset order, so training and evaluation draw the same permutation)
  and once over the others (the held-out subjects).
  """
  kinds = tuple(config.mivae.neuron_features)
  if not config.mivae.shuffle_neurons:
    return neuron_features.neuron_table(dataset, kinds)
  features = {}
  for trained in (True, False):
    recs = [rec for rec in dataset.recordings if (rec.name in train_names) == trained]
    if recs:
      shuffled = neuron_features.shuffled_across_subjects(
          [neuron_features.recording_features(rec, kinds) for rec in recs], seed=config.seed)
      features.update(zip((rec.name for rec in recs), shuffled))
  return neuron_features.neuron_table(
      dataset, kinds, features=[features[rec.name] for rec in dataset.recordings])


def axis_rotation(config, params, train_ds: Dataset) -> np.ndarray | None:
  """The rotation that fixes the shared latent axes (`mivae.rotate_axes`): "varimax" of
  the training subjects' decoder loadings, or None (axes as trained)."""
  kind = config.mivae.rotate_axes
  if kind is None:
    return None
  if kind != "varimax":
    raise errors.ConfigError(f"config.mivae.rotate_axes: unknown {kind!r}; expected 'varimax' or None")
  loadings = np.asarray(params["neural_decoder"]["loadings"])
  stacked = np.concatenate([loadings[s, :k] for s, k in enumerate(train_ds.neuron_counts)])
  return mivae.varimax(stacked).astype(np.float32)


class Encoders:
  """Jitted posterior means of a trained miVAE, for images and for any subject's responses,
  in the axes given by `rotation` (C, C) when set."""

  def __init__(self, model, params, table: dict, rotation: np.ndarray | None = None):
    import jax
    import jax.numpy as jnp
    first = params["neural_encoder"]
    first = first["feature_mlp0"] if "feature_mlp0" in first else first["neuron_weights"]
    neuron_features.check_feature_dim(table, first["kernel"].shape[0], "miVAE neuron table")
    self.table = {k: jnp.asarray(v) for k, v in table.items()}
    variables = {"params": params}
    self.k_max = table["mask"].shape[1]
    rotate = ((lambda g: g) if rotation is None else
              (lambda g: mivae.rotate_gaussian(*g, jnp.asarray(rotation))))
    self._images = jax.jit(lambda x: rotate(
        model.apply(variables, x, method=model.encode_images)["shared"]))
    self._responses = jax.jit(lambda r, s, std: rotate(model.apply(
        variables, r, s, self.table, standardized=std, method=model.encode_responses)["shared"]),
        static_argnums=2)
    self._standardize = jax.jit(lambda r, s: mivae.standardize_responses(r, s, self.table))

  def images(self, images) -> np.ndarray:
    """(N, ...) images -> (N, C) means of z_y^c."""
    return discriminative.batched_apply(lambda x: self._images(x)[0], images)

  def responses(self, responses, subject: int) -> np.ndarray:
    """(N, K_s) counts of table row `subject` -> (N, C) means of z_x^c."""
    padded = discriminative.padded(responses, self.k_max)
    subjects = np.full((len(padded),), subject, np.int32)
    return discriminative.batched_apply(lambda r, s: self._responses(r, s, False)[0],
                                   padded, subjects)

  def standardized(self, responses, subject: int) -> np.ndarray:
    padded = discriminative.padded(responses, self.k_max)
    return discriminative.batched_apply(self._standardize, padded,
                                   np.full((len(padded),), subject, np.int32))

  def image_encoder(self):
    """x -> (mu, logvar) of z_y^c, for attribution."""
    return self._images

  def response_encoder(self, subject: int):
    """standardised (B, K_max) -> (mu, logvar) of z_x^c of table row `subject`."""
    import jax.numpy as jnp
    return lambda x: self._responses(x, jnp.full((x.shape[0],), subject, jnp.int32), True)


def subject_representations(enc: Encoders, rec, subject: int, split: str, *,
                            centred: bool = True) -> dict:
  """Held-out posterior means of one recording, in `score_representations`' format, each
  set (images, trial-averaged responses, single trials) centred on its own mean.

  Why centred: the KL term ties q(z_x^c | x) to p(z^c | y), so both modalities share one
  mean, and weak stimuli and weak responses alike sit near it. Uncentred cosine then
  matches image contrast to population drive, which a model learns with no pairs at all
  (miVAE trained on shuffled pairs identified above chance on the simulator,
  `benchmarks/mivae_null_source.py`). The means use no pairing, so a model that learned
  nothing from the pairs scores chance. `centred=False` gives the raw posterior means, for
  that diagnosis (`centred_sets` turns them into these).
  """
  held_out = rec.subset(rec.indices(split))
  trials, trial_images = identification.single_trial_queries(held_out.responses)
  raw = dict(image_repr=enc.images(held_out.images),
             mean_repr=enc.responses(held_out.mean_responses, subject),
             trial_repr=enc.responses(trials, subject),
             trial_images=trial_images, metric="cosine")
  return centred_sets(raw) if centred else raw


def centred_sets(reprs: dict) -> dict:
  """`reprs` with image_repr, mean_repr and trial_repr each minus its own mean (axis 0)."""
  keys = ("image_repr", "mean_repr", "trial_repr")
  return dict(reprs, **{k: reprs[k] - reprs[k].mean(axis=0, keepdims=True) for k in keys})


def held_out_elbo(config, model, params, dataset: Dataset, table: dict) -> float:
  """Neural ELBO (log p(x|z) - KL terms) per neuron and trial on the held-out images of
  `dataset`'s subjects (the training subjects, table rows in the same order)."""
  import jax
  import jax.numpy as jnp
  jtable = {k: jnp.asarray(v) for k, v in table.items()}
  k_max = table["mask"].shape[1]

  @jax.jit
  def elbo(images, responses, subject):
    out = model.apply({"params": params}, images, responses, subject, jtable, train=False)
    mask = jtable["mask"][subject]
    terms = mivae.elbo_terms(out, responses, mask, inputs.downsample_images(
        images, config.model.decoder_size))
    return -(terms["neural_nll"] + terms["kl_shared"] + terms["kl_subject"]), mask.sum(-1)

  total, neurons = 0.0, 0
  for s, rec in enumerate(dataset.recordings):
    held_out = rec.subset(rec.indices(config.eval.split))
    trials, trial_images = identification.single_trial_queries(held_out.responses)
    padded = discriminative.padded(trials, k_max)
    for i in range(0, len(padded), 512):
      e, n = elbo(held_out.images[trial_images[i:i + 512]], padded[i:i + 512],
                  np.full((len(padded[i:i + 512]),), s, np.int32))
      total += float(np.sum(e))
      neurons += int(np.sum(n))
  return total / max(neurons, 1)


def _ratio(zero_shot: dict, within: dict, n_way: str) -> float:
  z = np.mean([zero_shot[t][n_way]["top1"] for t in ("decoding", "encoding")])
  w = np.mean([within[t][n_way]["top1"] for t in ("decoding", "encoding")])
  return float(z / w)


def ratio_ci(reprs: dict, holdout, train_names, n_way, *, replicates: int = 2000,
             seed: int = 0) -> list[float]:
  """95% interval of the zero-shot ratio over the sampling of the held-out images.

  Each bootstrap replicate draws, per subject, its held-out images with replacement (one
  draw for both tasks: query q is image q in each) and recomputes the ratio from every
  query's exact expected N-way top-1 (`identification.expected_top1`, no draw noise); the
  interval is the 2.5 and 97.5 percentiles. It does not cover training seeds.

  Args:
    reprs: {subject name: `subject_representations`} of every subject.
    holdout, train_names: the held-out and the training subjects' names.
    n_way: N (`mivae.ratio_n_way`).
  """
  n = n_way if n_way == "all" else int(n_way)
  successes = {}
  for name in (*holdout, *train_names):
    r, rows = reprs[name], []
    for task in ("decoding", "encoding"):
      similarity, true, _ = identification.discriminative_similarity(
          r["mean_repr"], r["image_repr"], task=task, metric=r["metric"])
      rows.append(identification.expected_top1(similarity, true, n))
    successes[name] = np.stack(rows)  # (2, Q)
  rng = np.random.default_rng(seed)

  def replicate_means(names):  # (replicates,) mean over subjects and tasks
    means = identification.bootstrap_query_means({n: successes[n] for n in names},
                                                 replicates, rng)
    return means.mean(axis=1)
  ratios = replicate_means(holdout) / replicate_means(train_names)
  return np.percentile(ratios, [2.5, 97.5]).tolist()


def same_session_ratio(zero_shot: dict, trained_in: dict, sessions, n_way="10", *,
                       replicates: int = 2000, seed: int = 0) -> dict:
  """Zero-shot top-1 of held-out sessions against the same sessions trained in.

  `zero_shot_ratio` divides the held-out sessions' zero-shot accuracy by the TRAINING
  subjects' accuracy, so a session that is hard for any model lowers it. This divides by
  the same sessions' accuracy in a run that trained on them (e.g. with
  `mivae.holdout_subjects=()`), on the same held-out images: what is lost by embedding a
  session from its neuron features alone, session difficulty taken out.

  Args:
    zero_shot: miVAE results (`evaluate`'s output) of the run that held `sessions` out.
    trained_in: those of a run trained on them, on the same data and split.
    sessions: the held-out session names.
    n_way: N of the N-way top-1.
    replicates, seed: the bootstrap over each session's held-out images, one draw shared
      by both runs and both tasks.

  Returns {"sessions": {name: {"zero_shot", "trained_in", "ratio"}}, "zero_shot",
  "trained_in", "ratio", "ratio_ci95"}: exact expected top-1 (from each query's rank,
  mean of decoding and encoding; over sessions, their mean), the ratios zero-shot /
  trained-in. The interval does not cover training seeds.
  """
  # (4, Q) per session: zero-shot decoding, encoding; trained-in decoding, encoding.
  rows = {name: np.stack([discriminative.query_successes(results, name, task, n_way)
                          for results in (zero_shot, trained_in)
                          for task in ("decoding", "encoding")])
          for name in sessions}
  means = {name: r.mean(axis=1) for name, r in rows.items()}
  per_session = {name: {"zero_shot": float(m[:2].mean()), "trained_in": float(m[2:].mean()),
                        "ratio": float(m[:2].mean() / m[2:].mean())}
                 for name, m in means.items()}
  overall = np.mean(list(means.values()), axis=0)
  boot = identification.bootstrap_query_means(rows, replicates, np.random.default_rng(seed))
  ratios = boot[:, :2].mean(axis=1) / boot[:, 2:].mean(axis=1)
  return {"sessions": per_session, "zero_shot": float(overall[:2].mean()),
          "trained_in": float(overall[2:].mean()),
          "ratio": float(overall[:2].mean() / overall[2:].mean()),
          "ratio_ci95": np.percentile(ratios, [2.5, 97.5]).tolist()}


def same_session_table(out: dict, n_way="10") -> str:
  """Markdown of `same_session_ratio`: one row per session, then all of them."""
  rows = [f"| held-out session | zero-shot, {n_way}-way top-1 | trained in | zero-shot / "
          "trained in |", "|---|---|---|---|"]
  for name, r in out["sessions"].items():
    rows.append(f"| {name} | {r['zero_shot']:.3f} | {r['trained_in']:.3f} | {r['ratio']:.3f} |")
  lo, hi = out["ratio_ci95"]
  rows.append(f"| all | {out['zero_shot']:.3f} | {out['trained_in']:.3f} | "
              f"{out['ratio']:.3f} [{lo:.2f}, {hi:.2f}] |")
  return "\n".join(rows)


def attribution_scores(config, enc: Encoders, dataset: Dataset, train_names, workdir) -> dict:
  """Score-based attribution of the shared latents to pixels and neurons, with figures;
  against the simulator's truth (MCC, rf_corr, responsive_auc) where recordings carry it."""
  import jax
  split, m = config.eval.split, config.mivae
  has_truth = all(rec.truth is not None and "latents" in rec.truth for rec in dataset.recordings)
  out, mcc, mcc_zero, auc, profiles_all = {}, [], [], [], []
  for s, rec in enumerate(dataset.recordings):
    held_out = rec.subset(rec.indices(split))
    if has_truth:
      score, _, _ = identifiability.mean_correlation_coefficient(
          enc.responses(held_out.mean_responses, s), rec.truth["latents"][rec.indices(split)])
      (mcc if rec.name in train_names else mcc_zero).append(score)
    if rec.name in train_names:
      trials, _ = identification.single_trial_queries(held_out.responses)
      x = enc.standardized(trials[:m.attribution_stimuli], s)
      maps = attribution.score_attribution(enc.response_encoder(s), x, jax.random.key(s),
                                           num_samples=m.attribution_samples)
      profiles = maps[:, :rec.num_neurons].T                      # (K, C)
      responsive = None if rec.truth is None else rec.truth.get("responsive")
      if responsive is not None and responsive.any() and not responsive.all():
        auc.append(identifiability.roc_auc(profiles.sum(1), responsive))
      profiles_all.append(profiles)

  rec = dataset[train_names[0]]
  idx = rec.indices(split)
  images = rec.images[idx[:m.attribution_stimuli]].astype(np.float32) / 255.0
  pixel = attribution.score_attribution(enc.image_encoder(), images, jax.random.key(0),
                                        num_samples=m.attribution_samples).sum(-1)  # (C, H, W)
  # Gradients through strided convolutions alias at the pixel scale (a checkerboard), in
  # the learned maps and in the truth alike: compare and show both at `map_smoothing`.
  smooth = lambda a: ndimage.gaussian_filter(a, m.map_smoothing)
  pixel = np.stack([smooth(p) for p in pixel])
  rows, cols, reference = np.arange(len(pixel)), None, None
  if has_truth:
    mcc_image, rows, cols = identifiability.mean_correlation_coefficient(
        enc.images(rec.images[idx]), rec.truth["latents"][idx])
    reference = np.stack([smooth(r) for r in rec.truth["latent_rf"][cols]])
    out.update(
        mcc=float(np.mean(mcc)), mcc_image=mcc_image,
        mcc_zero_shot=float(np.mean(mcc_zero)) if mcc_zero else None,
        rf_corr=float(np.mean([identifiability.map_correlation(pixel[r], ref)
                               for r, ref in zip(rows, reference)])),
        responsive_auc=float(np.mean(auc)) if auc else None)
  profiles = np.concatenate(profiles_all)
  labels, _ = attribution.neuron_groups(profiles, m.neuron_groups, seed=config.seed)
  out["neuron_groups"] = np.bincount(labels, minlength=m.neuron_groups).tolist()
  if workdir is not None:
    workdir = pathlib.Path(workdir)
    titles = ([f"z{j}" for j in rows] if cols is None
              else [f"z{r}~latent{c}" for r, c in zip(rows, cols)])
    attribution.plot_pixel_maps(pixel[rows], workdir / "mivae_pixel_maps.png",
                                reference=reference, titles=titles)
    attribution.plot_neuron_groups(profiles, labels, workdir / "mivae_neuron_groups.png",
                                   title="miVAE neuron groups (training subjects)")
  return out


def evaluate(config, model, params, dataset: Dataset, *, workdir=None) -> dict:
  """All miVAE results of a model trained on `dataset` minus `mivae.holdout_subjects`."""
  train_ds, holdout = split_subjects(config, dataset)
  train_names = [rec.name for rec in train_ds.recordings]
  table = neuron_table(config, dataset, train_names)
  enc = Encoders(model, params, table, axis_rotation(config, params, train_ds))
  reprs = {rec.name: subject_representations(enc, rec, s, config.eval.split)
           for s, rec in enumerate(dataset.recordings)}
  per_subject = {name: discriminative.score_representations(r, config.eval)
                 for name, r in reprs.items()}
  within = discriminative.combine_subjects({n: per_subject[n] for n in train_names})
  out = dict(within, per_subject=per_subject)
  if holdout:
    zero_shot = discriminative.combine_subjects({n: per_subject[n] for n in holdout})
    out["zero_shot"] = zero_shot
    out["zero_shot_ratio"] = _ratio(zero_shot, within, str(config.mivae.ratio_n_way))
    out["zero_shot_ratio_ci95"] = ratio_ci(reprs, holdout, train_names,
                                           config.mivae.ratio_n_way, seed=config.eval.seed)
  # The training subjects' rows of the table (same order as in train_ds; wider padding).
  rows = [s for s, rec in enumerate(dataset.recordings) if rec.name in train_names]
  out["held_out_elbo"] = held_out_elbo(config, model, params, train_ds,
                                       {k: v[rows] for k, v in table.items()})
  out.update(attribution_scores(config, enc, dataset, train_names, workdir))
  return out


# The targets of the method (docs: science.md), shown beside the measured values.
TARGETS = {"mcc": 0.8, "zero_shot_ratio": 0.8, "rf_corr": 0.7, "responsive_auc": 0.85}
METRICS = {
    "mcc": "z_x^c of the training subjects vs the true latent factors",
    "mcc_zero_shot": "the same for the held-out subjects",
    "mcc_image": "z_y^c vs the true latent factors",
    "zero_shot_ratio": "held-out / training subjects, N-way top-1",
    "rf_corr": "pixel attribution vs true factor receptive fields",
    "responsive_auc": "neuron attribution vs the true responsive mask",
    "held_out_elbo": "nats per neuron and trial",
}


def summary_table(results: dict, n_way: str = "10") -> str:
  """Markdown tables of `evaluate`'s results: the scalar metrics against their targets,
  then N-way top-1 of the training and the held-out subjects, with the null controls
  (present when the run made them) checked against chance's 99% band at every N (the
  N-way values shown; the N off the band named)."""
  rows = ["| metric | measured | target | |", "|---|---|---|---|"]
  for key, what in METRICS.items():
    if results.get(key) is not None:
      ci = results.get(f"{key}_ci95")
      value = f"{results[key]:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
      rows.append(f"| `{key}`: {what} | {value} | "
                  f"{targets.target_cells(results[key], TARGETS.get(key))} |")
  cell = lambda r: f"{r['top1']:.3f} [{r['top1_ci95'][0]:.2f}, {r['top1_ci95'][1]:.2f}]"
  band = lambda c: f"{c['top1']:.3f} (chance band {c['band'][0]:.3f}-{c['band'][1]:.3f})"
  top = [f"| {n_way}-way top-1 | decoding | encoding | at chance |", "|---|---|---|---|",
         f"| training subjects | {cell(results['decoding'][n_way])} | "
         f"{cell(results['encoding'][n_way])} | |"]
  if "zero_shot" in results:
    top.append(f"| held-out subjects, zero-shot | {cell(results['zero_shot']['decoding'][n_way])}"
               f" | {cell(results['zero_shot']['encoding'][n_way])} | |")
  nulls = (("null_control", "pairs shuffled within subject", None),
           ("null_neurons", "neuron features shuffled across subjects", "training subjects"))
  for key, what, also in nulls:
    if "chance_check" not in results.get(key, {}):
      continue
    null, check = results[key], results[key]["chance_check"]
    if also:
      top.append(f"| null control, {what}: {also} | {cell(null['decoding'][n_way])} | "
                 f"{cell(null['encoding'][n_way])} | not checked |")
    off = [f"{task} {n}-way" for task, n in discriminative.off_chance(check)]
    top.append(f"| null control, {what}: {', '.join(check['subjects'])} | "
               f"{band(check['decoding'][n_way])} | {band(check['encoding'][n_way])} | "
               f"{'yes, at every N' if not off else 'NO: ' + ', '.join(off)} |")
  return "\n".join(rows) + "\n\n" + "\n".join(top)


def sweep_table(runs, metrics=("mcc", "mcc_image", "rf_corr", "zero_shot_ratio")) -> str:
  """Markdown table of `jaxvna train` result files of one sweep: one row per file,
  labelled by the `--config.*` flags of its command, one column per miVAE metric."""
  from jaxvna.training import provenance

  rows = ["| run | " + " | ".join(f"`{m}`" for m in metrics) + " |",
          "|---" * (len(metrics) + 1) + "|"]
  for run in runs:
    flags = provenance.config_overrides(run["provenance"]["command"])
    values = run["results"]["mivae"]
    rows.append(f"| `{flags}` | " + " | ".join(f"{values[m]:.3f}" for m in metrics) + " |")
  return "\n".join(rows)
