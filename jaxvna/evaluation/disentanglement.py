"""Disentanglement of learned latents against known factors (the simulator's truth).

  mutual_information_gap  MIG (Chen et al. 2018): for each factor, the gap between the two
                          latent dimensions with the most mutual information about it,
                          over the factor's entropy; latents and factors discretised into
                          equal-width bins (as disentanglement_lib does)
  sap_score               SAP (Kumar et al. 2018), continuous factors: for each factor, the
                          gap between the two largest R^2 of one-dimension linear fits
  group_r2                R^2 of the best linear fit of each factor from each latent
                          group (all its dimensions together)
  group_sap_score         SAP over groups: the gap between the two groups that explain a
                          factor best (a rotation inside a group costs nothing)

All plain numpy; codes (N, D) and factors (N, F) of the same N samples.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxvna import correlation
from jaxvna.evaluation import identifiability


def discretize(values: np.ndarray, num_bins: int) -> np.ndarray:
  """(N, P) -> (N, P) int: each column cut into `num_bins` equal-width bins of its range."""
  values = np.asarray(values, np.float64)
  lo, hi = values.min(0), values.max(0)
  width = np.where(hi > lo, (hi - lo) / num_bins, 1.0)
  return np.clip(((values - lo) / width).astype(np.int64), 0, num_bins - 1)


def entropy(labels: np.ndarray) -> float:
  """Entropy (nats) of the empirical distribution of a (N,) int array."""
  p = np.bincount(labels) / len(labels)
  p = p[p > 0]
  return float(-np.sum(p * np.log(p)))


def mutual_information(a: np.ndarray, b: np.ndarray) -> float:
  """Mutual information (nats) of the empirical joint distribution of two (N,) int arrays."""
  joint = np.zeros((a.max() + 1, b.max() + 1))
  np.add.at(joint, (a, b), 1.0)
  joint /= len(a)
  pa, pb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
  nz = joint > 0
  return float(np.sum(joint[nz] * np.log(joint[nz] / (pa @ pb)[nz])))


def mutual_information_matrix(codes: np.ndarray, factors: np.ndarray,
                              num_bins: int = 20) -> np.ndarray:
  """(D, F) mutual information (nats) between discretised codes and factors."""
  c, f = discretize(codes, num_bins), discretize(factors, num_bins)
  return np.array([[mutual_information(c[:, i], f[:, j]) for j in range(f.shape[1])]
                   for i in range(c.shape[1])])


def mutual_information_gap(codes: np.ndarray, factors: np.ndarray, *,
                           num_bins: int = 20) -> dict:
  """MIG = mean over factors k of (I(c_(1); v_k) - I(c_(2); v_k)) / H(v_k), c_(1), c_(2)
  the codes with the largest and second largest information about v_k.

  Args:
    codes: (N, D) latent codes (e.g. posterior means), D >= 2.
    factors: (N, F) true factors.
    num_bins: bins of the discretisation of codes and factors.

  Returns:
    {"mig": float in [0, 1], "per_factor": (F,) list, "mutual_information": (D, F) list}.
  """
  codes, factors = np.asarray(codes), np.asarray(factors)
  if codes.shape[1] < 2:
    raise ValueError(f"MIG needs at least 2 code dimensions, got {codes.shape[1]}")
  mi = mutual_information_matrix(codes, factors, num_bins)
  h = np.array([entropy(col) for col in discretize(factors, num_bins).T])
  top = np.sort(mi, axis=0)[::-1]
  gap = (top[0] - top[1]) / np.maximum(h, 1e-12)
  return {"mig": float(gap.mean()), "per_factor": gap.tolist(),
          "mutual_information": mi.tolist()}


def _top_gap(scores: np.ndarray) -> np.ndarray:
  """(P, F) -> (F,) largest minus second largest entry of each column."""
  top = np.sort(scores, axis=0)[::-1]
  return top[0] - top[1]


def sap_score(codes: np.ndarray, factors: np.ndarray) -> dict:
  """SAP for continuous factors: mean over factors of the gap between the two largest R^2
  (squared Pearson correlation, the R^2 of a linear fit) of single code dimensions.

  Returns:
    {"sap": float in [0, 1], "per_factor": (F,) list, "r2": (D, F) list}.
  """
  r2 = correlation.columns(np.asarray(codes, np.float64), np.asarray(factors, np.float64)) ** 2
  gap = _top_gap(r2)
  return {"sap": float(gap.mean()), "per_factor": gap.tolist(), "r2": r2.tolist()}


def group_r2(codes: np.ndarray, factors: np.ndarray, groups: Sequence[int]) -> np.ndarray:
  """(G, F) R^2 of the least-squares fit (with intercept) of each factor from each group's
  dimensions of `codes`."""
  codes = np.asarray(codes, np.float64)
  factors = np.asarray(factors, np.float64)
  centred = factors - factors.mean(0)
  total = np.maximum((centred**2).sum(0), 1e-300)
  out, start = [], 0
  for width in groups:
    x = codes[:, start:start + width]
    x = np.concatenate([x - x.mean(0), np.ones((len(x), 1))], axis=1)
    coef, *_ = np.linalg.lstsq(x, centred, rcond=None)
    out.append(1 - ((centred - x @ coef) ** 2).sum(0) / total)
    start += width
  if start != codes.shape[1]:
    raise ValueError(f"groups {tuple(groups)} cover {start} of {codes.shape[1]} code dimensions")
  return np.stack(out)


def group_sap_score(codes: np.ndarray, factors: np.ndarray, groups: Sequence[int]) -> dict:
  """SAP over groups: mean over factors of the gap between the two largest `group_r2`.

  Returns:
    {"group_sap": float in [0, 1], "per_factor": (F,) list, "group_r2": (G, F) list}.
  """
  if len(groups) < 2:
    raise ValueError("group SAP needs at least 2 groups")
  r2 = group_r2(codes, factors, groups)
  gap = _top_gap(r2)
  return {"group_sap": float(gap.mean()), "per_factor": gap.tolist(), "group_r2": r2.tolist()}


def report(codes: np.ndarray, factors: np.ndarray, groups: Sequence[int], *,
           num_bins: int = 20) -> dict:
  """MIG, SAP, group SAP and MCC of `codes` against `factors` in one dict."""
  mig = mutual_information_gap(codes, factors, num_bins=num_bins)
  sap = sap_score(codes, factors)
  group = group_sap_score(codes, factors, groups)
  mcc, _, _ = identifiability.mean_correlation_coefficient(codes, factors)
  return {"mig": mig["mig"], "sap": sap["sap"], "group_sap": group["group_sap"], "mcc": mcc,
          "mig_per_factor": mig["per_factor"], "group_r2": group["group_r2"],
          "mutual_information": mig["mutual_information"]}
