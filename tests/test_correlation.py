"""Pearson correlation: agreement with np.corrcoef, constant columns, NaN rows, precision."""

import numpy as np
import pytest

from jaxvna import correlation


def _data(seed=0, n=200, p=4, q=3):
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(n, p)) * np.resize([1.0, 10.0, 0.01, 3.0], p) + 5.0
  b = 0.7 * a[:, :q] + rng.normal(size=(n, q))
  return a, b


def test_columns_matches_corrcoef():
  a, b = _data()
  expected = np.corrcoef(a, b, rowvar=False)[:4, 4:]
  r = correlation.columns(a, b)
  assert r.shape == (4, 3) and r.dtype == np.float64
  np.testing.assert_allclose(r, expected, rtol=1e-12, atol=1e-15)
  np.testing.assert_allclose(correlation.columns(a, a), np.corrcoef(a, rowvar=False),
                             rtol=1e-12, atol=1e-15)


def test_rows_are_columns_of_the_transposes():
  rng = np.random.default_rng(1)
  rows_a, rows_b = rng.normal(size=(5, 30)), rng.normal(size=(3, 30)) + 2.0  # (Q, D), (C, D)
  rows_b[0] += 3 * rows_a[0]
  expected = np.corrcoef(rows_a, rows_b)[:5, 5:]
  np.testing.assert_allclose(correlation.columns(rows_a.T, rows_b.T), expected, rtol=1e-12)
  r = correlation.rows(rows_a, rows_b)
  assert r.shape == (5, 3) and r.dtype == np.float64
  np.testing.assert_allclose(r, expected, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rows_of_a_constant_row_are_zero(dtype):
  rng = np.random.default_rng(4)
  a, b = rng.normal(size=(4, 20)).astype(dtype), rng.normal(size=(3, 20)).astype(dtype)
  a[1], b[2] = 0.1, -7.3
  r = correlation.rows(a, b)
  assert r.dtype == dtype and np.all(r[1] == 0) and np.all(r[:, 2] == 0)
  assert np.all(r[[0, 2, 3]][:, :2] != 0)
  with pytest.raises(ValueError, match=r"rows: .*\(4, 20\) and \(3, 5\)"):
    correlation.rows(a, b[:, :5])


def test_paired_matches_corrcoef_of_matching_columns():
  a, b = _data()
  expected = [np.corrcoef(a[:, k], b[:, k])[0, 1] for k in range(3)]
  r = correlation.paired(a[:, :3], b)
  assert r.shape == (3,) and r.dtype == np.float64
  np.testing.assert_allclose(r, expected, rtol=1e-12)
  np.testing.assert_allclose(r, np.diag(correlation.columns(a[:, :3], b)), rtol=1e-12)


@pytest.mark.parametrize("value", [0.0, 0.1, 1 / 3, -2.0, 1e3 + 0.7, 1e-30])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_constant_columns_correlate_zero(value, dtype):
  """Centring a constant such as 0.1 leaves rounding noise, not exact zeros; the noise of
  two constant columns would correlate +-1 if it were read as signal."""
  a, b = (x.astype(dtype) for x in _data(1))
  a[:, 1] = value
  b[:, 2] = value
  r = correlation.columns(a, b)
  assert np.all(r[1] == 0) and np.all(r[:, 2] == 0)
  assert np.all(r[[0, 2, 3]][:, :2] != 0)
  p = correlation.paired(a[:, :3], b)
  assert p[1] == 0 and p[2] == 0 and p[0] != 0
  assert not np.signbit(r[1]).any() and not np.signbit(r[:, 2]).any()  # +0.0, not -0.0


def test_small_but_real_variation_is_not_constant():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(300, 1))
  a = 1000.0 + 1e-3 * x                      # std / mean|x| = 1e-6, far above float64 noise
  b = x + 0.5 * rng.normal(size=(300, 1))
  expected = np.corrcoef(a[:, 0], b[:, 0])[0, 1]
  np.testing.assert_allclose(correlation.columns(a, b)[0, 0], expected, rtol=1e-6)
  np.testing.assert_allclose(correlation.paired(a, b)[0], expected, rtol=1e-6)
  # One nonzero entry in many rows still varies.
  spike = np.zeros((10_000, 1))
  spike[17] = 3.0
  assert correlation.columns(spike, spike)[0, 0] == pytest.approx(1.0)


def test_paired_leaves_out_nan_rows_per_column():
  rng = np.random.default_rng(3)
  a, b = rng.normal(size=(40, 5)), rng.normal(size=(40, 5))
  b[:, 0] += a[:, 0]
  a[3:7, 0] = np.nan
  b[10:12, 0] = np.nan
  b[:, 1] = np.nan           # no rows left
  b[1:, 2] = np.nan          # one row left
  a[:, 3] = 0.1              # constant
  b[::2, 4] = np.nan
  r = correlation.paired(a, b)
  keep = ~(np.isnan(a[:, 0]) | np.isnan(b[:, 0]))
  assert r[0] == pytest.approx(np.corrcoef(a[keep, 0], b[keep, 0])[0, 1], rel=1e-12)
  assert r[1] == 0 and r[2] == 0 and r[3] == 0
  assert r[4] == pytest.approx(np.corrcoef(a[1::2, 4], b[1::2, 4])[0, 1], rel=1e-12)
  assert not np.isnan(r).any()


def test_columns_gives_zero_for_a_column_with_nan_or_inf_and_for_too_few_rows():
  a, b = _data(4)
  a[5, 0] = np.nan
  b[7, 1] = np.inf
  with np.errstate(invalid="ignore"):
    r = correlation.columns(a, b)
  assert np.all(r[0] == 0) and np.all(r[:, 1] == 0) and np.all(r[1:, [0, 2]] != 0)
  assert np.all(correlation.columns(a[:1], b[:1]) == 0)
  assert correlation.columns(a[:0], b[:0]).shape == (4, 3)
  assert np.all(correlation.paired(a[:1, :3], b[:1]) == 0)


def test_precision_follows_the_inputs_at_least_float32():
  a, b = _data(5)
  a32, b32 = a.astype(np.float32), b.astype(np.float32)
  for f in (correlation.columns, lambda x, y: correlation.paired(x[:, :3], y)):
    assert f(a32, b32).dtype == np.float32
    assert f(a32, b).dtype == np.float64
    assert f(a.astype(np.float16), b32.astype(np.float16)).dtype == np.float32
    assert f(np.round(a).astype(np.uint8), np.round(b).astype(np.uint8)).dtype == np.float32
    assert f(np.round(a).astype(np.int64), b32).dtype == np.float64
    # float32 inputs are computed in float32, not in float64 and rounded at the end.
    r32, r64 = f(a32, b32), f(a32.astype(np.float64), b32.astype(np.float64))
    np.testing.assert_allclose(r32, r64, atol=1e-5)
  np.testing.assert_array_equal(correlation.columns(a32, b32),
                                _float32_reference(a32, b32))


def _float32_reference(a, b):
  """Column correlations written out in float32 (the same operations as `columns`)."""
  a = a - a.mean(0)
  b = b - b.mean(0)
  norm = np.sqrt((a * a).sum(0))[:, None] * np.sqrt((b * b).sum(0))[None, :]
  return (a.T @ b) / norm


def test_columns_in_blocks_equals_one_block(monkeypatch):
  a, b = _data(6, n=50, p=9, q=7)
  whole = correlation.columns(a, b)
  monkeypatch.setattr(correlation, "_CHUNK_ELEMENTS", 10)  # one row of 7 per block
  np.testing.assert_array_equal(correlation.columns(a, b), whole)


def test_shape_errors():
  with pytest.raises(ValueError, match=r"columns: .*\(5, 2\) and \(4, 2\)"):
    correlation.columns(np.zeros((5, 2)), np.zeros((4, 2)))
  with pytest.raises(ValueError, match="columns"):
    correlation.columns(np.zeros(5), np.zeros((5, 2)))
  with pytest.raises(ValueError, match=r"paired: .*\(5, 2\) and \(5, 3\)"):
    correlation.paired(np.zeros((5, 2)), np.zeros((5, 3)))
  with pytest.raises(ValueError, match="paired"):
    correlation.paired(np.zeros(5), np.zeros(5))
