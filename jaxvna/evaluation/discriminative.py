"""Discriminative decoding and encoding of a trained model on held-out images.

Every method answers both questions through two representations of the held-out data of
one subject, compared by one similarity (science.md):

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

import numpy as np

from jaxvna import errors
from jaxvna.data import Dataset, Recording
from jaxvna.evaluation import identification, predictivity


def _batched(fn, *arrays, batch_size=512):
  """Applies fn to row chunks of arrays (on device), returns the host concatenation."""
  out = [np.asarray(fn(*(a[i:i + batch_size] for a in arrays)))
         for i in range(0, len(arrays[0]), batch_size)]
  return np.concatenate(out)


def _padded(responses: np.ndarray, k_max: int) -> np.ndarray:
  pad = k_max - responses.shape[-1]
  return np.pad(responses, [(0, 0)] * (responses.ndim - 1) + [(0, pad)])


def representations(config, model, params, rec: Recording, subject: int, k_max: int):
  """Held-out representations of one recording for `config.method`.

  Returns a dict: image_repr (N, D), mean_repr (N, D) from trial-averaged responses,
  trial_repr (T, D) from single trials, trial_images (T,), metric.
  """
  import jax
  from jaxvna.training import objectives

  idx = rec.indices(config.eval.split)
  if idx.size < 2:
    raise ValueError(f"recording {rec.name}: {idx.size} images in split "
                     f"{config.eval.split!r}; discriminative evaluation needs at least 2")
  held_out = rec.subset(idx)
  trials, trial_images = identification.single_trial_queries(held_out.responses)
  out = dict(mean_repr=held_out.mean_responses, trial_repr=trials, trial_images=trial_images,
             metric="pearson")
  subject_ids = lambda n: np.full((n,), subject, np.int32)
  variables = {"params": params}
  images = (held_out.image_features if objectives.uses_image_features(config)
            else held_out.images)
  if config.method in ("vna", "dina"):
    embed_img = jax.jit(lambda x: model.apply(variables, x, method=model.embed_images))
    embed_resp = jax.jit(lambda r, s: model.apply(variables, r, s, method=model.embed_responses))
    embed = lambda r: _batched(embed_resp, _padded(r, k_max), subject_ids(len(r)))
    out.update(image_repr=_batched(embed_img, images), metric="cosine",
               mean_repr=embed(out["mean_repr"]), trial_repr=embed(trials))
  elif config.method == "direct_encoding":
    predict = jax.jit(lambda x, s: model.apply(variables, x, s, train=False))
    rates = _batched(predict, images, subject_ids(len(idx)))
    out.update(image_repr=rates[:, :rec.num_neurons],
               predictivity=predictivity.predictivity_report(rates[:, :rec.num_neurons],
                                                             held_out.responses))
  elif config.method == "direct_decoding":
    recon = jax.jit(lambda r, s: model.apply(variables, r, s, train=False))
    reconstruct = lambda r: _batched(recon, _padded(r, k_max), subject_ids(len(r)))
    target = objectives.downsample_images(held_out.images, config.model.decoder_size)
    out.update(image_repr=np.asarray(target), mean_repr=reconstruct(out["mean_repr"]),
               trial_repr=reconstruct(trials))
  else:
    raise errors.ConfigError(f"config.method: unknown {config.method!r}")
  return out


def score_representations(reprs: dict, eval_config) -> dict:
  """Identification reports for both tasks, on averaged and on single-trial responses
  (and the neural predictivity of encoding models, when `reprs` carries it)."""
  kw = dict(metric=reprs["metric"], n_ways=tuple(eval_config.n_ways), draws=eval_config.draws,
            seed=eval_config.seed)
  single = dict(trial_images=reprs["trial_images"])
  extra = {"predictivity": reprs["predictivity"]} if "predictivity" in reprs else {}
  return extra | {
      task: identification.discriminative_scores(
          reprs["mean_repr"], reprs["image_repr"], task=task, **kw)
      for task in ("decoding", "encoding")
  } | {"single_trial": {
      task: identification.discriminative_scores(
          reprs["trial_repr"], reprs["image_repr"], task=task, **single, **kw)
      for task in ("decoding", "encoding")}}


def combine_subjects(per_subject: dict) -> dict:
  """Mean over subjects of every number in the identification reports (same structure).

  Top-k and CI bounds are averaged as they are: the combined CI is the mean of the
  subjects' CIs, a summary rather than a CI of the mean.
  """
  values = list(per_subject.values())
  if isinstance(values[0], dict):
    return {k: combine_subjects({s: v[k] for s, v in per_subject.items()})
            for k in values[0] if all(k in v for v in values)}
  if isinstance(values[0], str):
    return values[0] if len(set(values)) == 1 else "mixed"
  numbers = [v for v in values if v is not None]  # e.g. FEVE of a subject without repeats
  return np.asarray(numbers, np.float64).mean(axis=0).tolist() if numbers else None


def evaluate_model(config, model, params, dataset: Dataset) -> dict:
  """Discriminative decoding/encoding of a trained model, per subject and combined.

  Returns {"decoding": {"<N>": {...}}, "encoding": ..., "single_trial": ...,
  ["predictivity": ... for direct encoding,] "per_subject": {name: same structure}};
  the top level is the mean over subjects.
  """
  k_max = max(dataset.neuron_counts)
  per_subject = {}
  for s, rec in enumerate(dataset.recordings):
    reprs = representations(config, model, params, rec, s, k_max)
    per_subject[rec.name] = score_representations(reprs, config.eval)
  return dict(combine_subjects(per_subject), per_subject=per_subject)


def evaluate_gabor_ridge(config, dataset: Dataset) -> dict:
  """The classic reference: Gabor-energy features + ridge, per subject, same protocol."""
  from jaxvna.models import gabor_ridge
  per_subject = {}
  for rec in dataset.recordings:
    train, test = rec.indices("train"), rec.indices(config.eval.split)
    model = gabor_ridge.GaborRidge().fit(rec.images[train], rec.responses[train],
                                         seed=config.seed)
    held_out = rec.subset(test)
    trials, trial_images = identification.single_trial_queries(held_out.responses)
    rates = model.predict(held_out.images)
    reprs = dict(image_repr=rates, mean_repr=held_out.mean_responses, trial_repr=trials,
                 trial_images=trial_images, metric="pearson",
                 predictivity=predictivity.predictivity_report(rates, held_out.responses))
    per_subject[rec.name] = score_representations(reprs, config.eval)
  return dict(combine_subjects(per_subject), per_subject=per_subject)
