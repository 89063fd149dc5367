"""Discriminative decoding and encoding of a trained model on held-out images.

Every method answers both questions through two representations of the held-out data of
one subject, compared by one similarity:

  method            image representation          response representation    similarity
  vna               image embedding               response embedding         cosine
  dina              joint image embedding         joint response embedding   cosine
  direct_encoding   predicted rates of the image  measured response          Pearson
  direct_decoding   the image, downsampled        reconstruction             Pearson
  gabor_ridge       ridge-predicted rates         measured response          Pearson

Decoding scores responses (queries) against images (candidates); encoding scores images
(queries) against responses (candidates). "averaged" uses trial-averaged responses;
"single_trial" uses every recorded trial: as a query (decoding), or as a candidate whose
distractors are trials of other images (encoding); see `identification.discriminative_similarity`.

DINA's joint embeddings concatenate its per-level unit embeddings scaled by
sqrt(level weight / total weight), so their cosine is the level-weighted mean of the
per-level cosines (`models.dina.DINA.joint`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from jaxvna.data import Dataset, Recording
from jaxvna.evaluation import identification, predictivity


def batched_apply(fn, *arrays, batch_size: int = 512) -> np.ndarray:
  """`fn` (a jitted function of row-aligned arrays) applied to chunks of `batch_size` rows,
  the host concatenation of its outputs: evaluation of any size in bounded device memory."""
  out = [np.asarray(fn(*(a[i:i + batch_size] for a in arrays)))
         for i in range(0, len(arrays[0]), batch_size)]
  return np.concatenate(out)


def padded(responses: np.ndarray, k_max: int) -> np.ndarray:
  """(..., K) responses zero-padded to (..., k_max), as a mixed-subject batch holds them."""
  pad = k_max - responses.shape[-1]
  return np.pad(responses, [(0, 0)] * (responses.ndim - 1) + [(0, pad)])


# represent(held_out, trials, subject, k_max) -> the representations of one recording's
# held-out images that differ from the measured responses: image_repr (N, D) and, where
# the method maps responses too, mean_repr (N, D), trial_repr (T, D), metric, predictivity.
Represent = Callable[[Recording, np.ndarray, int, int], dict]


def representations(config, rec: Recording, subject: int, k_max: int,
                    represent: Represent) -> dict:
  """Held-out representations of one recording, `represent` giving the method's part.

  Returns a dict: image_repr (N, D), mean_repr (N, D) from trial-averaged responses,
  trial_repr (T, D) from single trials, trial_images (T,), metric ("pearson" unless
  `represent` says otherwise) and, if given, predictivity.
  """
  idx = rec.indices(config.eval.split)
  if idx.size < 2:
    raise ValueError(f"recording {rec.name}: {idx.size} images in split "
                     f"{config.eval.split!r}; discriminative evaluation needs at least 2")
  held_out = rec.subset(idx)
  trials, trial_images = identification.single_trial_queries(held_out.responses)
  out = dict(mean_repr=held_out.mean_responses, trial_repr=trials, trial_images=trial_images,
             metric="pearson")
  out.update(represent(held_out, trials, subject, k_max))
  return out


def embedding_represent(config, model, params) -> Represent:
  """`Represent` of a dual encoder (a module with `embed_images` and `embed_responses`):
  embeddings of the held-out images and responses, compared by cosine."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxvna.models import inputs  # pylint: disable=g-import-not-at-top
  variables = {"params": params}
  embed_img = jax.jit(lambda x: model.apply(variables, x, method=model.embed_images))
  embed_resp = jax.jit(lambda r, s: model.apply(variables, r, s, method=model.embed_responses))

  def represent(held_out: Recording, trials: np.ndarray, subject: int, k_max: int) -> dict:
    embed = lambda r: batched_apply(embed_resp, padded(r, k_max),
                                    np.full((len(r),), subject, np.int32))
    images = inputs.recording_images(config, held_out)
    out = dict(image_repr=batched_apply(embed_img, images), metric="cosine",
               mean_repr=embed(held_out.mean_responses), trial_repr=embed(trials))
    if hasattr(model, "temperature") and config.loss.type == "clip":
      out["temperature"] = float(model.apply(variables, method=model.temperature))
    return out
  return represent


def ensemble_represent(represents: Sequence[Represent]) -> Represent:
  """The `Represent` of an ensemble of models (e.g. one config trained with several seeds).

  Members compared by cosine: their unit-normalised embeddings concatenated and scaled by
  1 / sqrt(M), so the ensemble's cosine of an image and a response is the mean of the M
  members' cosines (each member keeps its own space). Members compared by Pearson
  correlation (predicted rates, reconstructions: one shared space): their representations
  averaged. Per-member extras (temperature, predictivity) are dropped.
  """
  def represent(held_out: Recording, trials: np.ndarray, subject: int, k_max: int) -> dict:
    outs = [r(held_out, trials, subject, k_max) for r in represents]
    metrics = {o.get("metric", "pearson") for o in outs}
    if len(metrics) != 1:
      raise ValueError(f"ensemble members compare by different similarities: {sorted(metrics)}")
    metric = metrics.pop()
    out = {"metric": metric}
    for key in ("image_repr", "mean_repr", "trial_repr"):
      if key not in outs[0]:
        continue
      arrays = [np.asarray(o[key], np.float64) for o in outs]
      if metric == "cosine":
        units = [a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12) for a in arrays]
        out[key] = (np.concatenate(units, axis=1) / np.sqrt(len(units))).astype(np.float32)
      else:
        out[key] = np.mean(arrays, axis=0).astype(np.float32)
    return out
  return represent


def infonce_bound(mean_repr: np.ndarray, image_repr: np.ndarray, temperature: float, *,
                  batch_size: int, seed: int = 0, repeats: int = 10) -> dict:
  """The InfoNCE lower bound on image-response mutual information, on held-out data.

  The CLIP loss of a batch of B matched pairs is at least log(B) - I(image; response), so
  log(B) - loss (nats) is a lower bound on I, and a goodness of fit that, unlike the
  loss, compares across batch sizes: 0 is no information, log(B) its ceiling.

  Args:
    mean_repr: (N, D) embeddings of trial-averaged held-out responses.
    image_repr: (N, D) embeddings of their images, row-paired.
    temperature: the model's temperature (logits = cosine / temperature).
    batch_size: B, at most N (the training batch size, capped at N).
    seed, repeats: `repeats` seeded shuffles, each cut into floor(N / B) disjoint batches.

  Returns {"batch_size": B, "loss": mean CLIP loss, "log_batch_size": log(B),
  "bound_nats": log(B) - loss, "batches": number of batches averaged}.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jaxvna import losses  # pylint: disable=g-import-not-at-top
  n = len(mean_repr)
  b = min(int(batch_size), n)
  img, neu = (identification.unit_rows(np.asarray(x, np.float32))
              for x in (image_repr, mean_repr))
  rng = np.random.default_rng(seed)
  batch_losses = []
  for _ in range(repeats):
    order = rng.permutation(n)
    for i in range(n // b):
      rows = order[i * b:(i + 1) * b]
      batch_losses.append(float(losses.clip_loss(jnp.asarray(img[rows]),
                                                 jnp.asarray(neu[rows]), temperature)))
  loss = float(np.mean(batch_losses))
  return {"batch_size": b, "loss": loss, "log_batch_size": float(np.log(b)),
          "bound_nats": float(np.log(b)) - loss, "batches": len(batch_losses)}


def score_representations(reprs: dict, eval_config) -> dict:
  """Identification reports for both tasks, on averaged and on single-trial responses
  (and the neural predictivity of encoding models, when `reprs` carries it), and
  "query_ranks": {task: `identification.query_ranks`} of the averaged queries (query q of
  both tasks is held-out image q), from which `paired_comparison` compares two models."""
  kw = dict(n_ways=tuple(eval_config.n_ways), draws=eval_config.draws, seed=eval_config.seed)
  out = {"predictivity": reprs["predictivity"]} if "predictivity" in reprs else {}
  ranks = {}
  for task in ("decoding", "encoding"):
    similarity, targets, _ = identification.discriminative_similarity(
        reprs["mean_repr"], reprs["image_repr"], task=task, metric=reprs["metric"])
    out[task] = identification.identification_report(similarity, targets=targets, **kw)
    ranks[task] = {k: v.tolist() if isinstance(v, np.ndarray) else v
                   for k, v in identification.query_ranks(similarity, targets).items()}
  out["single_trial"] = {
      task: identification.discriminative_scores(
          reprs["trial_repr"], reprs["image_repr"], task=task, metric=reprs["metric"],
          trial_images=reprs["trial_images"], **kw)
      for task in ("decoding", "encoding")}
  return out | {"query_ranks": ranks}


def combine_subjects(per_subject: dict) -> dict:
  """Mean over subjects of every number in the identification reports (same structure).

  Top-k and CI bounds are averaged as they are: the combined CI is the mean of the
  subjects' CIs, a summary rather than a CI of the mean. "query_ranks" stays per subject.
  """
  values = list(per_subject.values())
  if isinstance(values[0], dict):
    return {k: combine_subjects({s: v[k] for s, v in per_subject.items()})
            for k in values[0] if k != "query_ranks" and all(k in v for v in values)}
  if isinstance(values[0], str):
    return values[0] if len(set(values)) == 1 else "mixed"
  numbers = [v for v in values if v is not None]  # e.g. FEVE of a subject without repeats
  return np.asarray(numbers, np.float64).mean(axis=0).tolist() if numbers else None


def evaluate_model(config, dataset: Dataset, represent: Represent) -> dict:
  """Discriminative decoding/encoding of a trained model, per subject and combined.

  Args:
    config: the run config (`eval` and `eval.split` are read).
    dataset: the recordings to evaluate, in the order of the subject ids the model knows.
    represent: the method's representations of held-out data (`Represent`).

  Returns {"decoding": {"<N>": {...}}, "encoding": ..., "single_trial": ...,
  ["predictivity": ... for encoding models,] ["infonce": `infonce_bound` for models
  trained with the CLIP loss,] "per_subject": {name: same structure}}; the top level is
  the mean over subjects.
  """
  k_max = max(dataset.neuron_counts)
  per_subject = {}
  for s, rec in enumerate(dataset.recordings):
    reprs = representations(config, rec, s, k_max, represent)
    per_subject[rec.name] = score_representations(reprs, config.eval)
    if "temperature" in reprs:
      per_subject[rec.name]["infonce"] = infonce_bound(
          reprs["mean_repr"], reprs["image_repr"], reprs["temperature"],
          batch_size=config.train.batch_size, seed=config.eval.seed)
  return dict(combine_subjects(per_subject), per_subject=per_subject)


def evaluate_gabor_ridge(config, dataset: Dataset) -> dict:
  """The classic reference: Gabor-energy features + ridge, per subject, same protocol
  (the default pyramid, less the frequencies finer than a recording's images carry)."""
  from jaxvna.models import gabor_ridge
  per_subject = {}
  for rec in dataset.recordings:
    train, test = rec.indices("train"), rec.indices(config.eval.split)
    frequencies = gabor_ridge.resolvable_frequencies(*rec.images.shape[1:3])
    model = gabor_ridge.GaborRidge(spatial_frequencies=frequencies).fit(
        rec.images[train], rec.responses[train])
    held_out = rec.subset(test)
    trials, trial_images = identification.single_trial_queries(held_out.responses)
    rates = model.predict(held_out.images)
    reprs = dict(image_repr=rates, mean_repr=held_out.mean_responses, trial_repr=trials,
                 trial_images=trial_images, metric="pearson",
                 predictivity=predictivity.predictivity_report(rates, held_out.responses))
    per_subject[rec.name] = score_representations(reprs, config.eval)
  return dict(combine_subjects(per_subject), per_subject=per_subject)


def paired_comparison(results_a: dict, results_b: dict, task: str, n_way, *,
                      subjects=None, replicates: int = 2000, seed: int = 0) -> dict:
  """Model a minus model b in N-way top-1 on the same held-out images, paired.

  Args:
    results_a, results_b: two `evaluate_model` outputs on the same held-out images (their
      "per_subject" reports carry "query_ranks").
    task: "decoding" or "encoding" (trial-averaged queries).
    n_way: N, an int >= 2 or "all" (as a string or not).
    subjects: names to compare (None: every subject of `results_a`).
    replicates, seed: the paired bootstrap over held-out images
      (`identification.paired_difference`).

  Returns {"difference", "ci95", "replicates"}: the difference of the exact expected
  N-way top-1 (no draw noise; mean over subjects) and its 95% interval over the sampling
  of the held-out images, both models scored on each replicate's images. An interval
  above 0 says a beats b on images like these.
  """
  names = list(results_a["per_subject"]) if subjects is None else list(subjects)
  successes = lambda results: {name: query_successes(results, name, task, n_way)
                               for name in names}
  return identification.paired_difference(successes(results_a), successes(results_b),
                                          replicates=replicates, seed=seed)


def query_successes(results: dict, subject: str, task: str, n_way) -> np.ndarray:
  """(Q,) each trial-averaged query's exact expected N-way top-1 for one subject and task
  of an `evaluate_model` output, from its stored "query_ranks"
  (`identification.expected_success`); n_way an int >= 2 or "all", as a string or not."""
  ranks = results["per_subject"].get(subject, {}).get("query_ranks")
  if ranks is None:
    raise ValueError(f"per_subject.{subject}.query_ranks: missing (results written before "
                     "jaxvna kept each query's rank cannot be paired)")
  r = ranks[task]
  return identification.expected_success(r["greater"], r["ties"], r["num_candidates"],
                                         n_way if n_way == "all" else int(n_way))


# z of chance's band: 99%, as the check is made at several N at once.
CHANCE_Z = 2.576


def chance_check(results: dict, *, subjects=None, z: float = CHANCE_Z) -> dict:
  """Whether a null control's identification sits at chance.

  For every task ("decoding", "encoding") and N (not "all") of `results` (an
  `evaluate_model` output, or any dict with "per_subject" reports of that form), the
  mean top-1 over `subjects` (names; None: all of "per_subject") is compared with the band
  chance +- z * sd of a ranking without information over the same queries
  (`identification.chance_top1_variance`; z = 2.576: 99%, as the check is made at several
  N at once).

  Returns {"<task>": {"<N>": {"top1", "chance", "band": [lo, hi], "at_chance"}},
  "subjects": the names checked, "at_chance": all of them}.
  """
  per_subject = [report for name, report in results["per_subject"].items()
                 if subjects is None or name in subjects]
  out, every = {}, True
  for task in ("decoding", "encoding"):
    out[task] = {}
    for n_way in results[task]:
      if n_way == "all":
        continue
      reports = [r[task][n_way] for r in per_subject]
      var = sum(identification.chance_top1_variance(
          int(r["num_candidates"]) - 1, int(r["n_way"]), int(r["num_queries"]))
          for r in reports) / len(reports) ** 2
      chance = float(np.mean([r["chance_top1"] for r in reports]))
      top1 = float(np.mean([r["top1"] for r in reports]))
      band = [chance - z * var ** 0.5, chance + z * var ** 0.5]
      at_chance = band[0] <= top1 <= band[1]
      every &= at_chance
      out[task][n_way] = dict(top1=top1, chance=chance, band=band, at_chance=at_chance)
  out["subjects"] = sorted(results["per_subject"]) if subjects is None else list(subjects)
  out["at_chance"] = every
  return out


def off_chance(check: dict) -> list[tuple[str, str]]:
  """The (task, N) of a `chance_check` whose top-1 lies outside chance's band."""
  return [(task, n) for task in ("decoding", "encoding")
          for n, c in check[task].items() if not c["at_chance"]]
