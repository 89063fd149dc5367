"""Scores of learned latents and attributions against known truth (simulator).

  mean_correlation_coefficient  MCC: Hungarian-matched absolute Pearson correlation
  roc_auc                       area under the ROC curve of scores for binary labels
  map_correlation               Pearson correlation of two maps over their pixels
"""

from __future__ import annotations

import numpy as np
from scipy import optimize, stats

from jaxvna import correlation


def mean_correlation_coefficient(learned: np.ndarray, true: np.ndarray
                                 ) -> tuple[float, np.ndarray, np.ndarray]:
  """MCC between learned latents and true factors after the best one-to-one matching.

  Args:
    learned: (N, P) learned latents of N samples.
    true: (N, Q) true factors of the same samples.

  Returns:
    (mcc, learned_index, true_index): the mean |Pearson r| over min(P, Q) matched pairs
    (Hungarian assignment maximising the total |r|) and the matched column indices.
  """
  if learned.shape[0] != true.shape[0]:
    raise ValueError(f"learned has {learned.shape[0]} samples, true {true.shape[0]}")
  corr = np.abs(correlation.columns(np.asarray(learned, np.float64),
                                    np.asarray(true, np.float64)))
  rows, cols = optimize.linear_sum_assignment(-corr)
  return float(corr[rows, cols].mean()), rows, cols


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
  """P(score of a random positive > score of a random negative), ties counted half
  (the Mann-Whitney U statistic divided by n_pos * n_neg)."""
  scores = np.asarray(scores, np.float64)
  labels = np.asarray(labels, bool)
  n_pos, n_neg = labels.sum(), (~labels).sum()
  if n_pos == 0 or n_neg == 0:
    raise ValueError(f"roc_auc needs both classes, got {n_pos} positives, {n_neg} negatives")
  ranks = stats.rankdata(scores)
  return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def map_correlation(a: np.ndarray, b: np.ndarray) -> float:
  """Pearson correlation of two equally shaped maps over all their entries."""
  a = np.asarray(a, np.float64).ravel()[:, None]
  b = np.asarray(b, np.float64).ravel()[:, None]
  return float(correlation.columns(a, b)[0, 0])
