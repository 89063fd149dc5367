"""Neural predictivity of an encoding model (Sensorium 2022 definitions).

Shapes: N images, R repeats (unrecorded repeats NaN, as in `Recording.responses`),
K neurons, T trials. A prediction is one value per image and neuron, (N, K), since the
model sees the same image on every repeat.

  single-trial correlation  Pearson over all recorded trials between each trial and the
                            prediction for its image.
  correlation to average    Pearson over images between the repeat-averaged response and
                            the prediction.
  FEVE                      fraction of explainable variance explained:
                              total var   = variance over all recorded trials (ddof=1)
                              noise var   = mean over images (with >= 2 repeats) of the
                                            variance over that image's repeats (ddof=1)
                              explainable = total var - noise var
                              MSE         = mean over recorded trials of (resp - pred)^2
                              FEVE        = 1 - (MSE - noise var) / explainable
                            A prediction equal to each image's true mean scores ~1; a
                            constant prediction at the grand mean scores
                            1 - (total - noise)/(total - noise) = 0 (up to the ddof of the
                            total variance, i.e. O(1/T)).
  FEV                       explainable / total variance (the ceiling a neuron allows).
"""

from __future__ import annotations

import numpy as np

from jaxvna import correlation


def per_neuron_correlation(pred, resp) -> np.ndarray:
  """Pearson correlation of each column (neuron) of pred (T, K) and resp (T, K) -> (K,),
  in float64: `correlation.paired`.

  Rows where either value is NaN are left out for that neuron; a neuron whose
  prediction or response has zero variance (or fewer than 2 rows) gets 0.
  """
  pred = np.asarray(pred, np.float64)
  resp = np.asarray(resp, np.float64)
  if pred.shape != resp.shape or pred.ndim != 2:
    raise ValueError(f"pred and resp: expected equal (T, K) shapes, got {pred.shape} and "
                     f"{resp.shape}")
  return correlation.paired(pred, resp)


def single_trial_correlation(pred, responses) -> np.ndarray:
  """Per-neuron Pearson over all recorded trials: pred (N, K), responses (N, R, K) -> (K,)."""
  pred, responses = _check(pred, responses)
  trials = np.broadcast_to(pred[:, None], responses.shape)
  k = responses.shape[2]
  return per_neuron_correlation(trials.reshape(-1, k), responses.reshape(-1, k))


def correlation_to_average(pred, responses) -> np.ndarray:
  """Per-neuron Pearson over images between pred (N, K) and the repeat mean of responses
  (N, R, K, NaN-padded) -> (K,). Images with no recorded repeat are left out."""
  pred, responses = _check(pred, responses)
  return per_neuron_correlation(pred, _nanmean(responses, axis=1))


def explainable_variance(responses) -> tuple[np.ndarray, np.ndarray]:
  """(total variance, noise variance) per neuron of responses (N, R, K) -> two (K,).

  Raises:
    ValueError: no image has two recorded repeats, so noise cannot be estimated.
  """
  responses = np.asarray(responses, np.float64)
  if responses.ndim != 3:
    raise ValueError(f"responses: expected (images, repeats, neurons), got {responses.shape}")
  repeats = (~np.isnan(responses)).sum(axis=1)  # (N, K)
  repeated = repeats >= 2
  if not repeated.any():
    raise ValueError("responses: FEVE needs at least one image with >= 2 recorded repeats "
                     f"to estimate trial-to-trial noise; got repeats per image in "
                     f"[{repeats.min()}, {repeats.max()}]")
  total = _nanvar(responses.reshape(-1, responses.shape[2]), axis=0)
  per_image_noise = np.where(repeated, _nanvar(responses, axis=1), 0.0)
  noise = per_image_noise.sum(axis=0) / np.maximum(repeated.sum(axis=0), 1)
  noise = np.where(repeated.any(axis=0), noise, np.nan)
  return total, noise


def fraction_explainable_variance(responses) -> np.ndarray:
  """FEV per neuron, (total - noise) / total; NaN for a neuron with zero total variance."""
  total, noise = explainable_variance(responses)
  return np.divide(total - noise, total, out=np.full_like(total, np.nan), where=total > 0)


def feve(pred, responses) -> np.ndarray:
  """Fraction of explainable variance explained per neuron (Sensorium formula) -> (K,).

  pred (N, K) is compared with every recorded repeat of responses (N, R, K). Neurons
  whose explainable variance (total - noise) is not positive have nothing to explain:
  they get NaN (use np.nanmean to average).

  Raises:
    ValueError: no image has >= 2 recorded repeats.
  """
  pred, responses = _check(pred, responses)
  total, noise = explainable_variance(responses)
  mse = _nanmean((responses - pred[:, None]) ** 2, axis=(0, 1))
  explainable = total - noise
  ok = explainable > 0
  result = np.full_like(total, np.nan)
  result[ok] = 1.0 - (mse[ok] - noise[ok]) / explainable[ok]
  return result


def predictivity_report(pred, responses, *, min_fev: float = 0.0) -> dict:
  """Means over neurons of the predictivity measures.

  Args:
    pred: (N, K) predicted response to each image.
    responses: (N, R, K) measured responses, NaN-padded repeats.
    min_fev: FEVE is averaged over neurons whose FEV exceeds this (Sensorium reports
      FEVE for FEV > 0.15); 0 keeps every neuron with positive explainable variance.

  Returns:
    {"single_trial_correlation", "correlation_to_average": means over all neurons;
     "feve": nanmean over kept neurons (None without repeats); "fev": mean FEV;
     "feve_neurons": neurons kept; "num_neurons"}.
  """
  pred, responses = _check(pred, responses)
  report = {
      "single_trial_correlation": float(single_trial_correlation(pred, responses).mean()),
      "correlation_to_average": float(correlation_to_average(pred, responses).mean()),
      "num_neurons": int(responses.shape[2]),
  }
  if ((~np.isnan(responses[..., 0])).sum(axis=1) >= 2).any():
    fev = fraction_explainable_variance(responses)
    values = feve(pred, responses)
    kept = ~np.isnan(values) & (fev > min_fev)
    report.update(feve=float(values[kept].mean()) if kept.any() else None,
                  fev=float(np.nanmean(fev)) if not np.isnan(fev).all() else None,
                  feve_neurons=int(kept.sum()))
  else:
    report.update(feve=None, fev=None, feve_neurons=0)
  return report


def _check(pred, responses):
  pred = np.asarray(pred, np.float64)
  responses = np.asarray(responses, np.float64)
  if responses.ndim != 3:
    raise ValueError(f"responses: expected (images, repeats, neurons), got {responses.shape}")
  if pred.shape != (responses.shape[0], responses.shape[2]):
    raise ValueError(f"pred: expected (images, neurons) = "
                     f"{(responses.shape[0], responses.shape[2])}, got {pred.shape}")
  if not np.isfinite(pred).all():
    raise ValueError(f"pred: {int((~np.isfinite(pred)).sum())} non-finite values")
  return pred, responses


def _nanmean(x, axis):
  valid = ~np.isnan(x)
  count = valid.sum(axis=axis)
  total = np.where(valid, x, 0.0).sum(axis=axis)
  return np.divide(total, count, out=np.full(np.shape(total), np.nan), where=count > 0)


def _nanvar(x, axis):
  """Unbiased (ddof=1) variance ignoring NaN; NaN where fewer than 2 values."""
  valid = ~np.isnan(x)
  count = valid.sum(axis=axis, keepdims=True)
  mean = np.where(valid, x, 0.0).sum(axis=axis, keepdims=True) / np.maximum(count, 1)
  sq = np.where(valid, (x - mean) ** 2, 0.0).sum(axis=axis)
  count = np.squeeze(count, axis=axis)
  return np.divide(sq, count - 1, out=np.full(np.shape(sq), np.nan), where=count >= 2)
