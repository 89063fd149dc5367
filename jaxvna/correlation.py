"""Pearson correlation, the one definition used by jaxvna's metrics and models (numpy only).

  columns   every column of one matrix with every column of another: (N, P), (N, Q) -> (P, Q)
  rows      every row of one matrix with every row of another: (Q, D), (C, D) -> (Q, C)
  paired    each column with its match, NaN rows left out per column: (N, K), (N, K) -> (K,)

`rows(a, b)` is `columns(a.T, b.T)` up to rounding: it scales each row to unit length
before the product, which keeps the many similarities of identification (queries x
candidates) on one scale; `columns` divides after the product.

Precision: both compute in `np.result_type(a, b, np.float32)`, the inputs' floating
precision promoted to at least float32, and return that dtype; cast the inputs to choose
(e.g. `np.asarray(x, np.float64)` for float64 from float32 data).

Constant columns: a column that does not vary correlates 0 with everything. A column
counts as constant when its standard deviation is at most sqrt(eps) (of the precision
used) times its mean absolute value: centring a constant column leaves rounding noise of
order eps times its values, not exactly zero, and that noise must not be read as signal.
Fewer than two rows, or a NaN or infinity in a column given to `columns`, also give 0.
"""

from __future__ import annotations

import numpy as np

# Rows of the (P, Q) result normalised at once; bounds the temporaries of `columns`.
_CHUNK_ELEMENTS = 1 << 22


def columns(a, b) -> np.ndarray:
  """Pearson correlation of every column of `a` with every column of `b`.

  Args:
    a: (N, P) array; N observations of P variables.
    b: (N, Q) array over the same N observations.

  Returns:
    (P, Q) array in `np.result_type(a, b, np.float32)`: entry (p, q) is the correlation
    of `a[:, p]` and `b[:, q]` over the N rows, 0 where either column is constant (see the
    module docstring).

  Raises:
    ValueError: `a` or `b` is not 2-D, or their numbers of rows differ.
  """
  a, b = _matrices(a, b, 0, "columns: expected (N, P) and (N, Q) arrays with the same N")
  n = a.shape[0]
  if n == 0:
    return np.zeros((a.shape[1], b.shape[1]), a.dtype)
  size_a, size_b = np.abs(a).sum(0), np.abs(b).sum(0)
  a = a - a.mean(0)
  b = b - b.mean(0)
  norm_a = np.sqrt((a * a).sum(0))
  norm_b = np.sqrt((b * b).sum(0))
  varies_a = _varies(norm_a, size_a, n)
  varies_b = _varies(norm_b, size_b, n)
  out = a.T @ b
  step = max(1, _CHUNK_ELEMENTS // max(1, out.shape[1]))
  for start in range(0, out.shape[0], step):
    rows = slice(start, start + step)
    denominator = norm_a[rows, None] * norm_b[None, :]
    keep = varies_a[rows, None] & varies_b[None, :] & (denominator > 0)
    np.divide(out[rows], denominator, out=out[rows], where=keep)
    out[rows][~keep] = 0
  return out


def rows(a, b) -> np.ndarray:
  """Pearson correlation of every row of `a` with every row of `b` (across their D entries).

  Args:
    a: (Q, D) array.
    b: (C, D) array.

  Returns:
    (Q, C) array in `np.result_type(a, b, np.float32)`, 0 where either row is constant.

  Raises:
    ValueError: `a` or `b` is not 2-D, or their numbers of columns differ.
  """
  a, b = _matrices(a, b, 1, "rows: expected (Q, D) and (C, D) arrays with the same D")
  return _unit_centred_rows(a) @ _unit_centred_rows(b).T


def _unit_centred_rows(x: np.ndarray) -> np.ndarray:
  size = np.abs(x).sum(axis=1)
  x = x - x.mean(axis=1, keepdims=True)
  norm = np.linalg.norm(x, axis=1, keepdims=True)
  keep = _varies(norm[:, 0], size, x.shape[1])[:, None] & (norm > 0)
  return np.divide(x, norm, out=np.zeros_like(x), where=keep)


def paired(a, b) -> np.ndarray:
  """Pearson correlation of each column of `a` with the same column of `b`.

  Args:
    a: (N, K) array, NaN where a value is missing.
    b: (N, K) array, NaN where a value is missing.

  Returns:
    (K,) array in `np.result_type(a, b, np.float32)`: entry k is the correlation of
    `a[:, k]` and `b[:, k]` over the rows where both are not NaN, 0 where either is
    constant over those rows or fewer than two rows remain.

  Raises:
    ValueError: `a` and `b` are not 2-D arrays of the same shape.
  """
  a, b = _as_float(a, b)
  if a.shape != b.shape or a.ndim != 2:
    raise ValueError(f"correlation.paired: expected two (N, K) arrays of the same shape, got "
                     f"shapes {a.shape} and {b.shape}")
  valid = ~(np.isnan(a) | np.isnan(b))
  count = valid.sum(axis=0)
  safe_count = np.maximum(count, 1).astype(a.dtype)
  a = np.where(valid, a, 0)
  b = np.where(valid, b, 0)
  size_a, size_b = np.abs(a).sum(axis=0), np.abs(b).sum(axis=0)
  a = np.where(valid, a - a.sum(axis=0) / safe_count, 0)
  b = np.where(valid, b - b.sum(axis=0) / safe_count, 0)
  sum_aa, sum_bb = (a * a).sum(axis=0), (b * b).sum(axis=0)
  varies = _varies(np.sqrt(sum_aa), size_a, count) & _varies(np.sqrt(sum_bb), size_b, count)
  covariance = (a * b).sum(axis=0)
  scale = np.sqrt(sum_aa * sum_bb)
  return np.divide(covariance, scale, out=np.zeros_like(covariance),
                   where=varies & (scale > 0))


def _matrices(a, b, shared_axis: int, expected: str) -> tuple[np.ndarray, np.ndarray]:
  """`a`, `b` as float matrices that agree along `shared_axis`, else ValueError."""
  a, b = _as_float(a, b)
  if a.ndim != 2 or b.ndim != 2 or a.shape[shared_axis] != b.shape[shared_axis]:
    raise ValueError(f"correlation.{expected}, got shapes {a.shape} and {b.shape}")
  return a, b


def _as_float(a, b) -> tuple[np.ndarray, np.ndarray]:
  a, b = np.asarray(a), np.asarray(b)
  dtype = np.result_type(a.dtype, b.dtype, np.float32)
  return a.astype(dtype, copy=False), b.astype(dtype, copy=False)


def _varies(norm: np.ndarray, size: np.ndarray, count) -> np.ndarray:
  """(K,) bool: a column of `count` rows, centred norm `norm` and sum of absolute values
  `size` has a standard deviation above sqrt(eps) times its mean absolute value, i.e.
  norm / sqrt(count) > sqrt(eps) * size / count (and at least two rows)."""
  rtol = np.sqrt(np.finfo(norm.dtype).eps)
  return (np.asarray(count) >= 2) & (norm * np.sqrt(count) > rtol * size)
