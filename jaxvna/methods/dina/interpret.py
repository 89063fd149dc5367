"""DINA interpretation: which image regions and which neurons carry the alignment.

S(image, response) is the cosine of DINA's joint embeddings (the level-weighted mean of the
per-level cosines). What is explained is its discriminative part for matched pairs, a
held-out image i and one subject's trial-averaged response r_i to it, against the other
held-out stimuli: for image regions D_i = S(image_i, r_i) - mean_j S(image_i, r_j), for
neurons D'_i = S(image_i, r_i) - mean_j S(image_j, r_i). Both are cosines with a centred
partner embedding; a component that every pair shares (and that identifies nothing) drops
out.

Spatial contribution maps (per image, then averaged over images):
- gradient x activation on the aligned feature maps:
  c_l(p) = sum_c (A_l(p, c) - mean A_l(p, c)) dD/dA_l(p, c), the gradient taken through
  level l's own head (each level's map is the input of its head) and the activation
  measured from its mean over the held-out images, so c_l is the first-order share of
  every position of level l in D relative to an average image: what every image has in
  common cannot tell images apart and gets no credit (as for the neurons below). Each
  level's map is upsampled to the image (bilinear, rescaled by h*w / (H*W) so that its sum
  is kept) and the levels are summed: an (H, W) map in units of S.
- occlusion: a `patch` x `patch` square moved by `stride` is replaced by the image's mean
  luminance; each pixel gets the mean drop D(image) - D(occluded) over the squares that
  cover it.

Key neurons, on `interpret.attribution_split` (validation), scored by how much D' depends on
each neuron:
- occlusion (the ranking used): mean over stimuli of |D'(r) - D'(r with r_k at its mean)|;
- gradient x input, its first-order approximation: mean over stimuli of
  |(r_k - mean_k) dD'/dr_k|, reported alongside (key_neuron_auc_gradient).
Both are checked on `eval.split` (test) by ablation: N-way top-1 decoding accuracy keeping
only the top-ranked fraction of neurons, against random rankings. Ablated neurons are held
at their mean response (`interpret.ablation_fill="mean"`), which removes their information
and nothing else; set to zero ("zero") they also shift the whole input far from anything
seen in training (a nonresponsive neuron still fires at its mean rate), and accuracy
collapses whichever neurons are kept.

Against the simulator's truth:
- rf_coverage = mean over responsive neurons of rf**2. Each truth["rf"] map has unit L2
  norm, so rf**2 is a distribution over pixels (where the neuron's filter energy lies) and
  their mean is the density of the population's receptive fields, every responsive neuron
  counted once; |rf| would weigh neurons by their RF area instead.
- spatial_rf_corr: Pearson correlation over pixels of the averaged gradient x activation
  map and rf_coverage (mean over subjects; per level and for occlusion too);
- key_neuron_auc: ROC AUC of the occlusion key-neuron scores against truth["responsive"].

Frequency probe (the paper's low-level finding): N-way decoding accuracy with candidate
images low-pass filtered (Gaussian, sigma `interpret.probe_sigma` pixels), high-pass filtered
(image - low-pass + the image's mean) or unfiltered; the model never sees filtered images
in training.

`run` (the `jaxvna interpret` command) trains or finishes the run in the workdir, then
writes interpret.json, interpret_maps.npz and the figures dina_contribution_maps.png,
dina_image_maps.png and dina_ablation.png.
"""

from __future__ import annotations

import itertools
import pathlib
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxvna import errors, files
from jaxvna.data import Dataset
from jaxvna.evaluation import discriminative, identifiability, identification, targets

PairSimilarity = Callable[..., jax.Array]


# ----------------------------------------------------------------------------- attribution

def gradient_x_activation(similarity: PairSimilarity, maps: dict[str, jax.Array],
                          partners: jax.Array,
                          baselines: dict[str, jax.Array] | None = None) -> dict[str, jax.Array]:
  """Per-position gradient x activation of a paired similarity, relative to a baseline.

  Args:
    similarity: (maps {name: (B, h, w, C)}, partners (B, ...)) -> (B,) similarity of each
      example with its partner; pure and differentiable.
    maps: the feature maps of B examples.
    partners: what each example is compared with (e.g. its response's joint embedding).
    baselines: {name: (h, w, C)} reference activations (default zero).

  Returns:
    {name: (B, h, w)} sum over channels of (map - baseline) * d similarity / d map.
  """
  grads = jax.grad(lambda m: jnp.sum(similarity(m, partners)))(maps)
  baselines = baselines or {k: 0.0 for k in maps}
  return {k: jnp.sum((maps[k] - baselines[k]) * grads[k], axis=-1) for k in maps}


def upsample_map(maps: jax.Array, size: tuple[int, int]) -> jax.Array:
  """(B, h, w) -> (B, H, W) bilinear, scaled by h*w / (H*W) so that each map's sum is kept."""
  b, h, w = maps.shape
  up = jax.image.resize(maps.astype(jnp.float32), (b, *size), "linear")
  return up * (h * w) / (size[0] * size[1])


def occluder_masks(size: tuple[int, int], patch: int, stride: int) -> np.ndarray:
  """(P, H, W) bool squares of side `patch` every `stride` pixels, the last row and column of
  squares flush with the border so every pixel is covered."""
  def starts(n):
    last = max(n - patch, 0)
    return sorted(set(range(0, last + 1, stride)) | {last})
  corners = list(itertools.product(starts(size[0]), starts(size[1])))
  masks = np.zeros((len(corners), *size), bool)
  for mask, (top, left) in zip(masks, corners):
    mask[top:top + patch, left:left + patch] = True
  return masks


def occlusion_map(similarity: PairSimilarity, images: np.ndarray, partners: np.ndarray, *,
                  patch: int, stride: int, batch_size: int = 8) -> np.ndarray:
  """Mean drop of a paired similarity when a square around each pixel is occluded.

  Args:
    similarity: (images (M, H, W, C) float, partners (M, ...)) -> (M,); jitted by the caller.
    images: (B, H, W, C) float images.
    partners: (B, ...) the partner of each image.
    patch, stride: occluder side and step, pixels.
    batch_size: images per call (each call scores P occluded copies of every image).

  Returns:
    (B, H, W) float32: S(image) - S(image with the square replaced by its mean), averaged
    over the squares covering the pixel.
  """
  images = np.asarray(images, np.float32)
  masks = occluder_masks(images.shape[1:3], patch, stride)
  coverage = masks.sum(0)
  p = len(masks)
  out = []
  for start in range(0, len(images), batch_size):
    x, partner = images[start:start + batch_size], partners[start:start + batch_size]
    fill = x.mean(axis=(1, 2, 3), keepdims=True)
    occluded = np.where(masks[:, None, :, :, None], fill[None], x[None])   # (P, b, H, W, C)
    scores = np.asarray(similarity(occluded.reshape(-1, *x.shape[1:]),
                                   np.tile(partner, (p,) + (1,) * (partner.ndim - 1))))
    drop = np.asarray(similarity(x, partner))[None] - scores.reshape(p, len(x))
    out.append(np.einsum("pb,phw->bhw", drop, masks) / coverage)
  return np.concatenate(out).astype(np.float32)


def gradient_x_input_scores(similarity: PairSimilarity, responses: np.ndarray,
                            partners: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
  """Mean over stimuli of |(r_k - mean_k) dS/dr_k|, the first-order key-neuron score.

  Args:
    similarity: (responses (B, K), partners (B, ...)) -> (B,); pure and differentiable.
    responses: (N, K) responses to N stimuli.
    partners: (N, ...) the partner of each response.

  Returns:
    (K,) float32 scores; higher = the similarity depends more on the neuron.
  """
  grad = jax.jit(jax.grad(lambda r, q: jnp.sum(similarity(r, q))))
  responses = np.asarray(responses, np.float32)
  baseline = responses.mean(axis=0)
  total = np.zeros(responses.shape[1], np.float64)
  for start in range(0, len(responses), batch_size):
    r = responses[start:start + batch_size]
    g = np.asarray(grad(jnp.asarray(r), jnp.asarray(partners[start:start + batch_size])))
    total += np.sum(np.abs((r - baseline) * g), axis=0)
  return (total / len(responses)).astype(np.float32)


def neuron_occlusion_scores(similarity: PairSimilarity, responses: np.ndarray,
                            partners: np.ndarray, *, neurons_per_call: int = 16) -> np.ndarray:
  """Mean over stimuli of |S(r) - S(r with neuron k held at its mean response)|.

  Args:
    similarity: (responses (M, K), partners (M, ...)) -> (M,); jitted by the caller.
    responses: (N, K) responses to N stimuli.
    partners: (N, ...) the partner of each response.
    neurons_per_call: neurons occluded per call (each call scores N responses per neuron).

  Returns:
    (K,) float32 scores; higher = the similarity depends more on the neuron.
  """
  responses = np.asarray(responses, np.float32)
  n, k = responses.shape
  baseline = responses.mean(axis=0)
  full = np.asarray(similarity(responses, partners))
  scores = np.zeros(k, np.float32)
  for start in range(0, k, neurons_per_call):
    neurons = np.arange(start, min(start + neurons_per_call, k))
    occluded = np.repeat(responses[None], len(neurons), axis=0)          # (c, N, K)
    occluded[np.arange(len(neurons)), :, neurons] = baseline[neurons, None]
    tiled = np.tile(partners, (len(neurons),) + (1,) * (partners.ndim - 1))
    s = np.asarray(similarity(occluded.reshape(-1, k), tiled)).reshape(len(neurons), n)
    scores[neurons] = np.abs(full[None] - s).mean(axis=1)
  return scores


def ablation_curve(accuracy: Callable[[np.ndarray], float], rankings: dict[str, np.ndarray],
                   fractions, *, random_rankings: int = 5, seed: int = 0) -> dict:
  """Accuracy when keeping only the first fraction of each ranking, and of random rankings.

  Args:
    accuracy: keep (K,) bool -> accuracy with only those neurons.
    rankings: {name: (K,) neuron indices, most important first}.
    fractions: fractions of neurons kept; at least one neuron is always kept.
    random_rankings: random permutations averaged for the reference curve.
    seed: their seed.

  Returns:
    {"fractions", "num_kept", "accuracy_<name>" per ranking, "accuracy_random"}, lists
    over fractions.
  """
  k = len(next(iter(rankings.values())))
  rng = np.random.default_rng(seed)
  randoms = [rng.permutation(k) for _ in range(random_rankings)]

  def kept(order, n):
    keep = np.zeros(k, bool)
    keep[order[:n]] = True
    return keep

  counts = [max(1, int(round(f * k))) for f in fractions]
  out = {"fractions": [float(f) for f in fractions], "num_kept": counts}
  for name, order in rankings.items():
    out[f"accuracy_{name}"] = [float(accuracy(kept(order, n))) for n in counts]
  out["accuracy_random"] = [float(np.mean([accuracy(kept(order, n)) for order in randoms]))
                            for n in counts]
  return out


def frequency_split(images: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
  """(N, H, W, C) uint8 images -> (low-pass, high-pass) float32 in [0, 1].

  low = Gaussian blur (sigma pixels, reflected borders); high = image - low + the image's
  mean luminance, so both keep the mean and the high-pass image keeps only the detail.
  """
  from scipy import ndimage
  x = np.asarray(images, np.float32) / 255.0
  low = ndimage.gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode="reflect")
  high = x - low + x.mean(axis=(1, 2, 3), keepdims=True)
  return np.clip(low, 0, 1), np.clip(high, 0, 1)


def rf_coverage(rf: np.ndarray, responsive: np.ndarray) -> np.ndarray:
  """(K, H, W) unit-norm receptive fields, (K,) mask -> (H, W) mean of rf**2 over the
  responsive neurons (sums to 1; module docstring)."""
  rf = np.asarray(rf, np.float64)[np.asarray(responsive, bool)]
  return np.mean(rf**2, axis=0).astype(np.float32)


# ----------------------------------------------------------------------------- a trained model

class Similarities:
  """Jitted pieces of a trained DINA for one subject: joint embeddings, and S as a function
  of feature maps, of images or of (unpadded) responses, each paired with a partner."""

  def __init__(self, model, params, subject: int, k_max: int):
    variables = {"params": params}
    apply = lambda method, *a: model.apply(variables, *a, method=method)

    def responses_joint(r):
      padded = jnp.pad(r, ((0, 0), (0, k_max - r.shape[1])))
      return apply(model.embed_responses, padded, jnp.full((r.shape[0],), subject, jnp.int32))

    self._maps = jax.jit(lambda x: apply(model.feature_maps, x))
    self._embed_images = jax.jit(lambda x: apply(model.embed_images, x))
    self._embed_responses = jax.jit(responses_joint)
    self.of_maps = lambda maps, neu: jnp.sum(
        apply(model.joint, apply(model.embed_feature_maps, maps)) * neu, axis=-1)
    self.of_images = jax.jit(lambda x, neu: jnp.sum(apply(model.embed_images, x) * neu, -1))
    self.of_responses = lambda r, img: jnp.sum(responses_joint(r) * img, axis=-1)
    self.of_responses_jit = jax.jit(self.of_responses)
    self._grad_x_act = jax.jit(
        lambda maps, neu, mean: gradient_x_activation(self.of_maps, maps, neu, mean))

  def embed_images(self, images) -> np.ndarray:
    return discriminative.batched_apply(self._embed_images, images)

  def embed_responses(self, responses) -> np.ndarray:
    return discriminative.batched_apply(self._embed_responses, np.asarray(responses, np.float32))

  def gradient_x_activation(self, images, neu, batch_size: int = 128) -> dict[str, np.ndarray]:
    """{level: (B, H, W)} upsampled gradient x activation of each image with its partner,
    relative to the mean feature maps of `images`."""
    size = images.shape[1:3]
    chunks = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
    sums = [jax.tree.map(lambda m: np.asarray(m).sum(0), self._maps(c)) for c in chunks]
    mean = jax.tree.map(lambda *s: sum(s) / len(images), *sums)
    parts = []
    for i, chunk in enumerate(chunks):
      contrib = self._grad_x_act(self._maps(chunk), neu[i * batch_size:(i + 1) * batch_size],
                                 mean)
      parts.append({k: np.asarray(upsample_map(v, size)) for k, v in contrib.items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def ablation_fill(kind: str, responses: np.ndarray) -> np.ndarray:
  """(K,) values of ablated neurons: "mean" (their mean over `responses`) or "zero"."""
  if kind == "mean":
    return responses.mean(axis=0)
  if kind == "zero":
    return np.zeros(responses.shape[1], np.float32)
  raise errors.ConfigError(f"interpret.ablation_fill: unknown {kind!r}; expected 'mean'|'zero'")


def _decoding_top1(neu: np.ndarray, img: np.ndarray, config) -> float:
  """N-way (interpret.n_way) top-1 decoding accuracy of responses (queries) against images."""
  n_way = config.interpret.n_way
  report = identification.discriminative_scores(
      neu, img, task="decoding", metric="cosine", n_ways=(n_way,), draws=config.eval.draws,
      seed=config.eval.seed)
  return report[str(n_way)]["top1"]


def interpret_subject(config, sims: Similarities, rec) -> dict:
  """Maps, key neurons, ablation and frequency probe of one recording (numpy results)."""
  d = config.interpret
  test = rec.subset(rec.indices(config.eval.split))
  images, responses = test.images, test.mean_responses
  img, neu = sims.embed_images(images), sims.embed_responses(responses)

  # Partners are centred (module docstring): D = S(own pair) - mean S over the candidates.
  m = min(d.map_images, len(images))
  level_maps = sims.gradient_x_activation(images[:m], neu[:m] - neu.mean(0))
  grad_maps = sum(level_maps.values())
  o = min(d.occlusion_images, m)
  occlusion = occlusion_map(sims.of_images, images[:o].astype(np.float32) / 255.0,
                            neu[:o] - neu.mean(0), patch=d.occlusion_patch,
                            stride=d.occlusion_stride)

  ranked_on = rec.subset(rec.indices(d.attribution_split))
  ranked_responses = ranked_on.mean_responses
  ranked_img = sims.embed_images(ranked_on.images)
  ranked_img = ranked_img - ranked_img.mean(0)
  scores = neuron_occlusion_scores(sims.of_responses_jit, ranked_responses, ranked_img)
  gradient_scores = gradient_x_input_scores(sims.of_responses, ranked_responses, ranked_img)
  ranking = np.argsort(-scores, kind="stable")
  fill = ablation_fill(d.ablation_fill, ranked_responses)
  accuracy = lambda keep: _decoding_top1(sims.embed_responses(np.where(keep, responses, fill)),
                                         img, config)
  ablation = ablation_curve(
      accuracy, {"top_ranked": ranking,
                 "gradient_ranked": np.argsort(-gradient_scores, kind="stable")},
      d.ablation_fractions, random_rankings=d.ablation_random_rankings, seed=config.seed)

  low, high = frequency_split(images, d.probe_sigma)
  probe = {"unfiltered": _decoding_top1(neu, img, config),
           "low_pass": _decoding_top1(neu, sims.embed_images(low), config),
           "high_pass": _decoding_top1(neu, sims.embed_images(high), config)}
  return dict(level_maps=level_maps, gradient_x_activation=grad_maps, occlusion=occlusion,
              scores=scores, gradient_scores=gradient_scores, ranking=ranking,
              ablation=ablation, probe=probe, example_images=images[:d.example_images])


def truth_scores(result: dict, truth) -> dict:
  """spatial_rf_corr (gradient x activation, occlusion, per level) and key_neuron_auc
  (occlusion ranking; gradient x input ranking as key_neuron_auc_gradient)."""
  coverage = rf_coverage(truth["rf"], truth["responsive"])
  corr = lambda maps: identifiability.map_correlation(maps.mean(0), coverage)
  out = {"rf_coverage": coverage,
         "spatial_rf_corr": corr(result["gradient_x_activation"]),
         "spatial_rf_corr_occlusion": corr(result["occlusion"]),
         "spatial_rf_corr_per_level": {k: corr(v) for k, v in result["level_maps"].items()}}
  responsive = np.asarray(truth["responsive"], bool)
  if responsive.any() and not responsive.all():
    out["key_neuron_auc"] = identifiability.roc_auc(result["scores"], responsive)
    out["key_neuron_auc_gradient"] = identifiability.roc_auc(result["gradient_scores"],
                                                             responsive)
  return out


def _mean(values):
  return float(np.mean(values)) if values else None


def interpret(config, model, params, dataset: Dataset, workdir) -> dict:
  """Interprets a trained DINA on every recording; writes the maps and figures to workdir.

  Returns the interpret.json dict: top-level numbers are means over recordings, per-subject
  numbers (and the full key-neuron ranking) under "per_subject".
  """
  workdir = pathlib.Path(workdir)
  k_max = max(dataset.neuron_counts)
  results, per_subject, arrays = {}, {}, {}
  for s, rec in enumerate(dataset.recordings):
    r = interpret_subject(config, Similarities(model, params, s, k_max), rec)
    if rec.truth is not None:
      r.update(truth_scores(r, rec.truth))
    results[rec.name] = r
    per_subject[rec.name] = {
        k: r[k] for k in ("spatial_rf_corr", "spatial_rf_corr_occlusion",
                          "spatial_rf_corr_per_level", "key_neuron_auc",
                          "key_neuron_auc_gradient", "ablation", "probe") if k in r}
    per_subject[rec.name]["key_neuron_ranking"] = r["ranking"].tolist()
    arrays.update({f"{rec.name}/gradient_x_activation": r["gradient_x_activation"].mean(0),
                   f"{rec.name}/occlusion": r["occlusion"].mean(0),
                   f"{rec.name}/key_neuron_scores": r["scores"],
                   f"{rec.name}/key_neuron_gradient_scores": r["gradient_scores"]})
    arrays.update({f"{rec.name}/{level}": v.mean(0) for level, v in r["level_maps"].items()})
    if "rf_coverage" in r:
      arrays[f"{rec.name}/rf_coverage"] = r["rf_coverage"]
  files.atomic_write(workdir / "interpret_maps.npz",
                     lambda f: np.savez_compressed(f, **arrays))

  first = next(iter(per_subject.values()))
  curves = [p["ablation"] for p in per_subject.values()]
  out = {"dataset": dataset.name, "levels": list(config.dina.levels),
         "n_way": config.interpret.n_way}
  for key in ("spatial_rf_corr", "spatial_rf_corr_occlusion", "key_neuron_auc",
              "key_neuron_auc_gradient"):
    values = [p[key] for p in per_subject.values() if key in p]
    if values:
      out[key] = _mean(values)
  if "spatial_rf_corr_per_level" in first:
    out["spatial_rf_corr_per_level"] = {
        level: _mean([p["spatial_rf_corr_per_level"][level] for p in per_subject.values()])
        for level in config.dina.levels}
  out["ablation"] = {
      "fractions": first["ablation"]["fractions"],
      **{key: np.mean([c[key] for c in curves], 0).tolist()
         for key in ("accuracy_top_ranked", "accuracy_gradient_ranked", "accuracy_random")}}
  out["frequency_probe"] = {"sigma_pixels": config.interpret.probe_sigma, **{
      k: _mean([p["probe"][k] for p in per_subject.values()])
      for k in ("unfiltered", "low_pass", "high_pass")}}
  out["per_subject"] = per_subject
  out["files"] = ["interpret_maps.npz", "dina_contribution_maps.png", "dina_image_maps.png",
                  "dina_ablation.png"]
  plot_contribution_maps(results, workdir / "dina_contribution_maps.png")
  plot_image_maps(next(iter(results.values())), workdir / "dina_image_maps.png")
  plot_ablation(out["ablation"], config.interpret.n_way, workdir / "dina_ablation.png",
                title=f"{dataset.name}: key-neuron ablation, mean over recordings")
  return out


def run(config, workdir, *, force: bool = False) -> dict:
  """`jaxvna interpret`: trains (or finishes) the DINA run in workdir, interprets it and
  writes workdir/interpret.json."""
  from jaxvna.training import provenance, summaries, train
  started = time.time()
  if config.method != "dina":
    raise errors.ConfigError(f"jaxvna interpret explains DINA models; config.method is "
                     f"{config.method!r} (use e.g. configs/dina_sim.py)")
  model, params, dataset = train.train(config, workdir, force=force)
  out = interpret(config, model, params, dataset, workdir)
  out["provenance"] = provenance.record(config, dataset, started=started)
  files.write_json(pathlib.Path(workdir) / "interpret.json", out)
  summaries.write_outputs(workdir, summaries.trained_step(workdir),
                          results={"interpret": out},
                          figures=[pathlib.Path(workdir) / f for f in out["files"]
                                   if f.endswith(summaries.FIGURE_SUFFIX)])
  print(summary_table(out))
  print(f"\nresults: {pathlib.Path(workdir) / 'interpret.json'}")
  return out


# Targets of the method (docs: science.md), on the simulator's truth.
TARGETS = {"spatial_rf_corr": 0.6, "key_neuron_auc": 0.85}


def summary_table(out: dict, kept: float = 0.5) -> str:
  """Markdown table of interpret.json (`interpret`): the truth scores (simulator) with
  their targets, the frequency probe, the ablation at `kept` of the neurons, wall time."""
  rows = ["| | measured | target | |", "|---|---|---|---|"]

  def row(label, value, key=None):
    rows.append(f"| {label} | {value} | {targets.target_cells(out.get(key), TARGETS.get(key))} |")

  if "spatial_rf_corr" in out:
    row("spatial_rf_corr, gradient x activation", f"{out['spatial_rf_corr']:.3f}",
        "spatial_rf_corr")
    row("spatial_rf_corr, occlusion", f"{out['spatial_rf_corr_occlusion']:.3f}")
    levels = out.get("spatial_rf_corr_per_level", {})
    if levels:
      row(f"spatial_rf_corr, {' / '.join(levels)}",
          " / ".join(f"{v:.3f}" for v in levels.values()))
    row("key_neuron_auc, occlusion", f"{out['key_neuron_auc']:.3f}", "key_neuron_auc")
    row("key_neuron_auc, gradient x input", f"{out['key_neuron_auc_gradient']:.3f}")
  probe = out["frequency_probe"]
  row(f"{out['n_way']}-way decoding: unfiltered / low-pass / high-pass",
      " / ".join(f"{probe[k]:.3f}" for k in ("unfiltered", "low_pass", "high_pass")))
  ablation = out["ablation"]
  if kept in ablation["fractions"]:
    i = ablation["fractions"].index(kept)
    row(f"ablation, {kept:.0%} of neurons kept: top-ranked / random",
        f"{ablation['accuracy_top_ranked'][i]:.3f} / {ablation['accuracy_random'][i]:.3f}")
  if "provenance" in out:
    row("wall time of `jaxvna interpret` (training included when it trained)",
        f"{out['provenance']['wall_time_s'] / 60:.1f} min")
  return "\n".join(rows)


# ----------------------------------------------------------------------------- figures

def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def plot_contribution_maps(results: dict, path, max_rows: int = 4) -> None:
  """PNG: per recording, the averaged gradient x activation and occlusion maps and, on the
  simulator, the true receptive-field coverage."""
  plt = _plt()
  names = list(results)[:max_rows]
  columns = [("gradient_x_activation", "gradient x activation"), ("occlusion", "occlusion")]
  if "rf_coverage" in results[names[0]]:
    columns.append(("rf_coverage", "true RF coverage"))
  fig, axes = plt.subplots(len(names), len(columns), squeeze=False,
                           figsize=(2.4 * len(columns), 2.4 * len(names) + 0.3))
  for i, name in enumerate(names):
    r = results[name]
    for j, (key, title) in enumerate(columns):
      image = r[key] if key == "rf_coverage" else r[key].mean(0)
      axes[i, j].imshow(image, cmap="magma")
      label = title
      if key == "gradient_x_activation" and "spatial_rf_corr" in r:
        label += f"\nr = {r['spatial_rf_corr']:.2f}"
      if key == "occlusion" and "spatial_rf_corr_occlusion" in r:
        label += f"\nr = {r['spatial_rf_corr_occlusion']:.2f}"
      axes[i, j].set_title(label, fontsize=8)
      axes[i, j].set_xticks([])
      axes[i, j].set_yticks([])
    axes[i, 0].set_ylabel(name, fontsize=8)
  fig.suptitle("DINA: average contribution to image-response similarity", fontsize=9)
  fig.tight_layout()
  files.save_figure(fig, path, dpi=110)
  plt.close(fig)


def plot_image_maps(result: dict, path) -> None:
  """PNG: a few held-out images, their gradient x activation and occlusion maps."""
  plt = _plt()
  images = result["example_images"]
  n = min(len(images), len(result["occlusion"]))
  fig, axes = plt.subplots(3, n, squeeze=False, figsize=(1.7 * n, 5.4))
  for j in range(n):
    axes[0, j].imshow(images[j, ..., 0], cmap="gray", vmin=0, vmax=255)
    for i, key in ((1, "gradient_x_activation"), (2, "occlusion")):
      m = result[key][j]
      lim = np.abs(m).max() + 1e-12
      axes[i, j].imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  for i, label in enumerate(("image", "grad x act", "occlusion")):
    axes[i, 0].set_ylabel(label, fontsize=8)
  fig.tight_layout()
  files.save_figure(fig, path, dpi=110)
  plt.close(fig)


def plot_ablation(ablation: dict, n_way: int, path, *, title: str = "") -> None:
  """PNG: N-way decoding accuracy vs fraction of neurons kept, top-ranked vs random."""
  plt = _plt()
  fig, ax = plt.subplots(figsize=(4.5, 3.4))
  ax.plot(ablation["fractions"], ablation["accuracy_top_ranked"], "o-",
          label="top-ranked kept (occlusion)")
  ax.plot(ablation["fractions"], ablation["accuracy_gradient_ranked"], "^-",
          label="top-ranked kept (gradient x input)")
  ax.plot(ablation["fractions"], ablation["accuracy_random"], "s--", label="random kept")
  ax.axhline(1 / n_way, color="k", ls=":", label="chance")
  ax.set_xscale("log")
  ax.set_xlabel("fraction of neurons kept")
  ax.set_ylabel(f"{n_way}-way top-1 decoding")
  ax.set_title(title, fontsize=8)
  ax.legend(fontsize=8)
  fig.tight_layout()
  files.save_figure(fig, path, dpi=110)
  plt.close(fig)
