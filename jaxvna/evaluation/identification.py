"""Discriminative identification: N-way top-k accuracy from a similarity matrix.

The two discriminative tasks (as in the VNA paper, README "VNA: training and evaluation"):
  decoding: a query is a response (single trial or trial-averaged); the candidates are
            images; the true candidate is the image that caused the response.
  encoding: a query is an image; the candidates are responses; the true candidate is
            the response that image caused.
Every method answers both by building one similarity matrix, rows = queries, columns =
candidates, and higher = more alike. `discriminative_similarity` builds it from two
representations, one computed from responses and one from images:

  method            response-side rows          image-side rows           metric
  VNA / DINA        neural embedding            image embedding           cosine
  direct encoding   measured response           predicted response        pearson
  direct decoding   reconstruction from resp.   image (flattened pixels)  pearson

  decoding: S[q, c] = sim(response_repr[q], image_repr[c])
  encoding: S[q, c] = sim(image_repr[image of q], response_repr[c])
So for VNA decoding is cos(neural_emb, image_emb) and encoding its transpose; for direct
encoding, decoding correlates the query response with the predicted response of each
candidate image, and encoding correlates the query image's predicted response with each
candidate response; for direct decoding, decoding correlates the reconstruction from the
query response with each candidate image, and encoding correlates the query image with
the reconstruction from each candidate response.

How a draw is scored (exactly, without materialising candidate sets). For query q let
the pool be the candidates that may serve as distractors (every candidate outside the
true candidate's group; by default every candidate but the true one), g_q the number of
pool members scoring strictly above the true candidate and t_q the number tying with it.
One draw picks N-1 distractors uniformly without replacement from the pool,
independently for every query. Only two numbers of that draw decide the outcome: how
many distractors beat the truth (G) and how many tie (T). Their joint law is
multivariate hypergeometric, so each draw samples G ~ Hyp(g, pool - g, N-1) and
T ~ Hyp(t, pool - g - t, N-1-G) directly: the same distribution as drawing index sets
and comparing gathered similarities, in O(Q) per draw instead of O(Q N). The pairwise
comparison of the true similarity with every pool member is done once, chunked over
queries so memory stays bounded (10,000 x 10,000 at 200 draws takes about a second).

Tie rule: the true candidate is placed uniformly at random among the T + 1 tied items
and we score the expectation of that, i.e. success@k = clip((k - G) / (T + 1), 0, 1).
A constant similarity therefore scores exactly chance, k/N, in every draw.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple, Sequence

import numpy as np

from jaxvna import correlation

DEFAULT_N_WAYS = (2, 10, 50, 100, "all")
# Bound on the (queries x candidates) boolean blocks held at once.
_CHUNK_ELEMENTS = 1 << 24


def cosine_similarity(a, b) -> np.ndarray:
  """Cosine similarity between every row of `a` (Q, D) and of `b` (C, D) -> (Q, C).

  A zero row has similarity 0 to everything (it carries no direction).
  """
  a, b = _as_matrix_pair(a, b)
  return unit_rows(a) @ unit_rows(b).T


def pearson_similarity(a, b) -> np.ndarray:
  """Pearson correlation between every row of `a` (Q, D) and of `b` (C, D) -> (Q, C).

  Each row is centred over its D entries; a constant row correlates 0 with everything.
  """
  a, b = _as_matrix_pair(a, b)
  return correlation.rows(a, b)


_METRICS = {"cosine": cosine_similarity, "pearson": pearson_similarity}


def similarity_matrix(queries, candidates, metric: str = "cosine") -> np.ndarray:
  """(Q, C) similarity of query rows to candidate rows under `metric` (cosine|pearson)."""
  if metric not in _METRICS:
    raise ValueError(f"metric: unknown {metric!r}; expected one of {sorted(_METRICS)}")
  return _METRICS[metric](queries, candidates)


def single_trial_queries(responses) -> tuple[np.ndarray, np.ndarray]:
  """Every recorded trial as its own query, for single-trial evaluation.

  Args:
    responses: (N, R, K) responses, unrecorded repeats NaN (as in `Recording`).

  Returns:
    trials: (T, K) the recorded trials, image-major then repeat order.
    trial_images: (T,) int64 index of the image that caused each trial; use it as
      `targets` for decoding and as `trial_images` for encoding.
  """
  responses = np.asarray(responses)
  if responses.ndim != 3:
    raise ValueError(f"responses: expected (images, repeats, neurons), got {responses.shape}")
  recorded = ~np.isnan(responses).all(axis=2)
  image_index, repeat_index = np.nonzero(recorded)
  return responses[image_index, repeat_index], image_index.astype(np.int64)


def discriminative_similarity(response_repr, image_repr, *, task: str,
                              metric: str = "cosine", trial_images=None):
  """The similarity matrix, true candidates and distractor groups of one task.

  Args:
    response_repr: (M, D) one row per response: neural embeddings (VNA), measured
      responses (direct encoding) or reconstructions from responses (direct decoding).
      Rows are trial-averaged responses of the images (M == N) when `trial_images` is
      None, else single trials.
    image_repr: (N, D) one row per image: image embeddings, predicted responses or
      flattened images, matching `response_repr`'s space.
    task: "decoding" (queries = responses, candidates = images) or "encoding"
      (queries = images, candidates = responses).
    metric: "cosine" or "pearson".
    trial_images: optional (M,) image index of each response row (single trials, e.g.
      from `single_trial_queries`).

  Returns:
    (similarity, targets, candidate_groups) for `nway_accuracy`:
    decoding: similarity (M, N) = sim(response_repr, image_repr), targets = the image
      of each response, groups None.
    encoding: averaged: similarity (N, N) = sim(image_repr, response_repr), targets =
      arange(N). Single trial: one query per trial t, row t = sim(image_repr[image of
      t], response_repr) (shape (M, M)), target t, and the candidates' groups are their
      images, so other trials of the query's own image never serve as distractors.
      That matrix is M x M floats (10,000 trials: 400 MB in float32).
  """
  response_repr, image_repr = _as_matrix_pair(response_repr, image_repr)
  n_responses, n_images = response_repr.shape[0], image_repr.shape[0]
  single_trial = trial_images is not None
  if single_trial:
    trial_images = _index_array(trial_images, "trial_images", n_images)
    if trial_images.shape[0] != n_responses:
      raise ValueError(f"trial_images: {trial_images.shape[0]} entries for "
                       f"{n_responses} response rows")
  elif n_responses != n_images:
    raise ValueError(f"response_repr: {n_responses} rows for {n_images} images; "
                     "pass trial_images for single-trial rows")
  else:
    trial_images = np.arange(n_images)
  if task == "decoding":
    return similarity_matrix(response_repr, image_repr, metric), trial_images, None
  if task == "encoding":
    per_image = similarity_matrix(image_repr, response_repr, metric)  # (N, M)
    if not single_trial:
      return per_image, trial_images, None
    return per_image[trial_images], np.arange(len(trial_images)), trial_images
  raise ValueError(f"task: unknown {task!r}; expected 'decoding' or 'encoding'")


def discriminative_scores(response_repr, image_repr, *, task: str, metric: str = "cosine",
                          trial_images=None, n_ways=DEFAULT_N_WAYS, draws: int = 200,
                          topk: Sequence[int] = (1, 5), seed: int = 0) -> dict:
  """`identification_report` of one task; see `discriminative_similarity` for the matrix."""
  similarity, targets, groups = discriminative_similarity(
      response_repr, image_repr, task=task, metric=metric, trial_images=trial_images)
  return identification_report(similarity, n_ways=n_ways, draws=draws, topk=topk, seed=seed,
                               targets=targets, candidate_groups=groups)


def nway_accuracy(similarity, n_way, *, draws: int = 200, topk: Sequence[int] = (1, 5),
                  seed: int = 0, targets=None, candidate_groups=None) -> dict:
  """N-way top-k identification accuracy over random candidate draws.

  Args:
    similarity: (Q, C) finite scores, higher = more alike (see the module docstring
      for the matrix each task builds).
    n_way: candidates per query (true one + n_way - 1 distractors), an int >= 2, or
      "all". A query whose pool has at most n_way - 1 members uses its whole pool.
    draws: number of random candidate draws (distractors are re-drawn for every query
      in every draw).
    topk: the k values to score; k >= N always succeeds.
    seed: seed of the draws; the result is a deterministic function of the inputs.
    targets: optional (Q,) index of the true candidate of each query; default
      arange(Q) (requires Q == C). Several queries may share a target (single trials).
    candidate_groups: optional (C,) labels; a query's distractors are drawn only from
      candidates whose label differs from its true candidate's label. Default: every
      candidate is its own group (only the true candidate is excluded).

  Returns:
    {"top<k>": mean over draws of the per-draw accuracy (mean over queries),
     "top<k>_ci95": [2.5, 97.5] percentiles over draws (widened to contain the mean
       when a skewed per-draw distribution puts the mean outside them),
     "chance_top<k>": expected accuracy of a random ranking (k/N),
     "n_way": N as given ("all" stays "all"), "draws": draws actually made,
     "num_queries": Q, "num_candidates": C, "mean_candidates_per_query": mean N used}.
    When every query uses its whole pool (n_way "all" or N >= pool + 1) nothing is
    random: one deterministic draw is made and each CI collapses to its value.
  """
  return _score(_competitors(similarity, targets, candidate_groups), n_way, draws=draws,
                topk=topk, seed=seed)


def identification_report(similarity, *, n_ways: Iterable = DEFAULT_N_WAYS, draws: int = 200,
                          topk: Sequence[int] = (1, 5), seed: int = 0, targets=None,
                          candidate_groups=None) -> dict:
  """`nway_accuracy` at several N: {"2": {...}, "10": {...}, ..., "all": {...}}.

  The similarity comparison is done once for all N; each N draws from `seed`, so
  report[str(N)] equals nway_accuracy(similarity, N, seed=seed, ...).
  """
  competitors = _competitors(similarity, targets, candidate_groups)
  return {str(n_way): _score(competitors, n_way, draws=draws, topk=topk, seed=seed)
          for n_way in n_ways}


class _Competitors(NamedTuple):
  """Per query (Q,): pool members scoring above / tying with the true candidate, pool size."""
  greater: np.ndarray
  ties: np.ndarray
  pool: np.ndarray
  num_candidates: int


def _competitors(similarity, targets, candidate_groups) -> _Competitors:
  """Validates the inputs and compares every true score with its pool, in query chunks."""
  similarity = np.asarray(similarity)
  if similarity.ndim != 2 or 0 in similarity.shape:
    raise ValueError(f"similarity: expected a non-empty (queries, candidates) matrix, "
                     f"got shape {similarity.shape}")
  if not np.isfinite(similarity).all():
    raise ValueError(f"similarity: {int((~np.isfinite(similarity)).sum())} non-finite values")
  num_queries, num_candidates = similarity.shape
  if targets is None:
    if num_queries != num_candidates:
      raise ValueError(f"targets: required when queries ({num_queries}) != candidates "
                       f"({num_candidates})")
    targets = np.arange(num_queries)
  targets = _index_array(targets, "targets", num_candidates)
  if targets.shape != (num_queries,):
    raise ValueError(f"targets: expected shape ({num_queries},), got {targets.shape}")
  groups = None
  if candidate_groups is not None:
    groups = np.asarray(candidate_groups)
    if groups.shape != (num_candidates,):
      raise ValueError(f"candidate_groups: expected shape ({num_candidates},), "
                       f"got {groups.shape}")

  greater = np.empty(num_queries, np.int64)
  ties = np.empty(num_queries, np.int64)
  pool = np.empty(num_queries, np.int64)
  chunk = max(1, _CHUNK_ELEMENTS // num_candidates)
  for start in range(0, num_queries, chunk):
    rows = np.arange(start, min(start + chunk, num_queries))
    block = similarity[rows]
    true = block[np.arange(len(rows)), targets[rows]][:, None]
    if groups is None:
      # Only the true candidate is excluded, and it ties with itself exactly once.
      greater[rows] = np.count_nonzero(block > true, axis=1)
      ties[rows] = np.count_nonzero(block == true, axis=1) - 1
      pool[rows] = num_candidates - 1
    else:
      eligible = groups[None, :] != groups[targets[rows]][:, None]
      greater[rows] = np.count_nonzero((block > true) & eligible, axis=1)
      ties[rows] = np.count_nonzero((block == true) & eligible, axis=1)
      pool[rows] = np.count_nonzero(eligible, axis=1)
  if pool.min() < 1:
    raise ValueError(f"candidate_groups: query {int(np.argmin(pool))} has no possible "
                     "distractor (every candidate shares its true candidate's group)")
  return _Competitors(greater, ties, pool, num_candidates)


def _score(competitors: _Competitors, n_way, *, draws, topk, seed) -> dict:
  """Samples the draws (see the module docstring) and summarises them."""
  topk = tuple(int(k) for k in topk)
  if not topk or min(topk) < 1:
    raise ValueError(f"topk: expected positive integers, got {topk}")
  if int(draws) < 1:
    raise ValueError(f"draws: expected >= 1, got {draws}")
  if n_way == "all":
    distractors_wanted = competitors.num_candidates
  elif isinstance(n_way, (int, np.integer)) and not isinstance(n_way, bool) and n_way >= 2:
    distractors_wanted = int(n_way) - 1
  else:
    raise ValueError(f"n_way: expected an integer >= 2 or 'all', got {n_way!r}")

  greater, ties, pool = competitors.greater, competitors.ties, competitors.pool
  num_queries = len(greater)
  n_distractors = np.minimum(distractors_wanted, pool)
  exhaustive = bool(np.all(n_distractors == pool))
  num_draws = 1 if exhaustive else int(draws)

  # Per-draw sums over queries, built in query chunks to bound memory.
  rng = np.random.default_rng(seed)
  sums = np.zeros((len(topk), num_draws))
  chunk = max(1, _CHUNK_ELEMENTS // num_draws)
  for start in range(0, num_queries, chunk):
    sl = slice(start, start + chunk)
    g, t, p, n = greater[sl], ties[sl], pool[sl], n_distractors[sl]
    if exhaustive:
      beat, tied = g[None], t[None]
    else:
      shape = (num_draws, len(g))
      beat = rng.hypergeometric(g, p - g, n, size=shape)
      tied = rng.hypergeometric(t, p - g - t, n - beat, size=shape)
    for i, k in enumerate(topk):
      sums[i] += _tie_credit(k, beat, tied).sum(axis=1)
  per_draw = sums / num_queries

  group_size = n_distractors + 1
  result = {}
  for i, k in enumerate(topk):
    mean = float(per_draw[i].mean())
    lo, hi = np.percentile(per_draw[i], [2.5, 97.5])
    # Near a ceiling the per-draw law is skewed enough for the percentiles to miss the
    # mean; the reported interval always contains the value it qualifies.
    result[f"top{k}"] = mean
    result[f"top{k}_ci95"] = [min(float(lo), mean), max(float(hi), mean)]
    result[f"chance_top{k}"] = float(np.mean(np.minimum(k, group_size) / group_size))
  result.update(n_way=n_way if n_way == "all" else int(n_way), draws=num_draws,
                num_queries=num_queries, num_candidates=competitors.num_candidates,
                mean_candidates_per_query=float(group_size.mean()))
  return result


def chance_top1_variance(pool: int, n_way, num_queries: int) -> float:
  """Variance of the N-way top-1 accuracy (mean over `num_queries` queries, expectation over
  candidate draws) of a ranking that carries no information.

  With no information the true candidate's rank among its `pool` possible distractors is
  uniform: g ~ U{0..pool} of them score above it, and the query scores
  C(pool - g, n) / C(pool, n) (no drawn distractor above it; n = min(N - 1, pool)), whose
  mean is 1 / (n + 1), the chance level. The variance of that mean over queries taken as
  independent is what a null control's accuracy scatters by around chance: the 95% CI of
  `nway_accuracy` covers only the draws, not the finite query set.
  """
  n = pool if n_way == "all" else min(int(n_way) - 1, pool)
  g = np.arange(pool + 1)
  score = np.exp(log_comb(pool - g, n) - log_comb(pool, n))
  return float(score.var() / num_queries)


def log_comb(n, k) -> np.ndarray:
  """log C(n, k) elementwise (broadcast, float64), -inf where k < 0 or k > n."""
  from scipy import special  # pylint: disable=g-import-not-at-top
  n, k = np.broadcast_arrays(np.asarray(n, np.float64), np.asarray(k, np.float64))
  valid = (k >= 0) & (k <= n)
  n, k = np.where(valid, n, 1.0), np.where(valid, k, 0.0)
  out = special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1)
  return np.where(valid, out, -np.inf)


def _tie_credit(k, beat, tied):
  """P(true candidate in the top k) when it sits at a uniform place among its ties."""
  return np.clip((k - beat) / (tied + 1.0), 0.0, 1.0)


def _as_matrix_pair(a, b):
  a = np.asarray(a)
  b = np.asarray(b)
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
    raise ValueError(f"expected (Q, D) and (C, D) matrices, got {a.shape} and {b.shape}")
  dtype = np.result_type(a.dtype, b.dtype, np.float32)
  return a.astype(dtype, copy=False), b.astype(dtype, copy=False)


def unit_rows(x) -> np.ndarray:
  """Each row of `x` (M, D) divided by its L2 norm; all-zero rows stay zero."""
  norm = np.linalg.norm(x, axis=1, keepdims=True)
  return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def _index_array(values, name, size):
  values = np.asarray(values)
  if values.ndim != 1 or values.dtype.kind not in "iu":
    raise ValueError(f"{name}: expected a 1-D integer array, got {values.dtype} {values.shape}")
  if values.size and (values.min() < 0 or values.max() >= size):
    raise ValueError(f"{name}: indices must lie in [0, {size}), got "
                     f"[{values.min()}, {values.max()}]")
  return values.astype(np.int64)


def query_ranks(similarity, targets=None) -> dict:
  """Where each query's true candidate ranks: what `expected_success` needs, at any N.

  Args:
    similarity: (Q, C) finite scores, higher = more alike.
    targets: optional (Q,) index of each query's true candidate; default arange(Q).

  Returns:
    {"greater": (Q,) int64 candidates scoring above the true one, "ties": (Q,) int64
     candidates tying with it (itself excluded), "num_candidates": C}. Every candidate
    but the true one may be a distractor, as in `nway_accuracy` without groups.
  """
  competitors = _competitors(similarity, targets, None)
  return {"greater": competitors.greater, "ties": competitors.ties,
          "num_candidates": competitors.num_candidates}


def expected_success(greater, ties, num_candidates: int, n_way) -> np.ndarray:
  """Each query's N-way top-1 success, in expectation over the candidate draws.

  The draw and tie rule of `nway_accuracy` (N-1 of the C-1 other candidates drawn without
  replacement; the true candidate placed uniformly among its ties): with g candidates
  scoring above the true one and t tying with it, success needs none of the g drawn and
  is 1/(T+1) for T ties drawn, so the expectation is
  sum_j C(t, j) C(C-1-g-t, n-j) / C(C-1, n) / (j+1) with n = min(N-1, C-1). The mean over
  queries is `nway_accuracy`'s top-1 in the limit of infinitely many draws.

  Args:
    greater, ties: (Q,) counts of `query_ranks`.
    num_candidates: C.
    n_way: N, an int >= 2, or "all".

  Returns:
    (Q,) float64 expected top-1 success of each query, in [0, 1].
  """
  greater, ties = np.asarray(greater, np.int64), np.asarray(ties, np.int64)
  pool = int(num_candidates) - 1
  drawn = pool if n_way == "all" else min(int(n_way) - 1, pool)
  others = pool - greater - ties
  success = np.zeros(len(greater))
  for j in range(int(ties.max(initial=0)) + 1):
    log_p = log_comb(ties, j) + log_comb(others, drawn - j) - log_comb(pool, drawn)
    success += np.exp(log_p) / (j + 1)
  return success


def expected_top1(similarity, targets, n_way) -> np.ndarray:
  """(Q,) each query's expected N-way top-1 success (`expected_success` of
  `query_ranks(similarity, targets)`)."""
  ranks = query_ranks(similarity, targets)
  return expected_success(ranks["greater"], ranks["ties"], ranks["num_candidates"], n_way)


def bootstrap_query_means(values: dict, replicates: int, rng) -> np.ndarray:
  """Means over queries with the queries resampled, averaged over subjects.

  Each replicate draws, for every subject in turn (dict order), its Q queries with
  replacement (`rng.integers(Q, size=(replicates, Q))`, one draw shared by all leading
  rows of that subject's values) and takes the mean over the drawn queries.

  Args:
    values: {subject: (..., Q) per-query values}; the leading shape is the same for all.
    replicates: number of bootstrap replicates.
    rng: a `np.random.Generator`, advanced by the draws.

  Returns:
    (replicates, ...) the replicate means, averaged over subjects.
  """
  total = 0.0
  for v in values.values():
    v = np.asarray(v, np.float64)
    q = v.shape[-1]
    draws = rng.integers(q, size=(replicates, q))
    counts = np.stack([np.bincount(d, minlength=q) for d in draws])  # (replicates, Q)
    total = total + np.moveaxis(v @ counts.T, -1, 0) / q
  return total / len(values)


def paired_difference(a: dict, b: dict, *, replicates: int = 2000, seed: int = 0) -> dict:
  """Difference of two models' accuracy on the same queries, with a paired bootstrap.

  Args:
    a, b: {subject: (Q,) per-query success} of the two models on the same held-out
      queries (e.g. `expected_success`); the same subjects and query counts in both.
    replicates, seed: the bootstrap over queries (`bootstrap_query_means`), one draw of
      queries shared by both models: the interval covers the sampling of the held-out
      images, and only the models' disagreements on the same queries widen it.

  Returns:
    {"difference": mean over subjects of mean(a) - mean(b), "ci95": [2.5, 97.5]
     percentiles of the replicates, "replicates": replicates}.
  """
  if a.keys() != b.keys():
    raise ValueError(f"paired_difference: subjects differ: {sorted(a)} vs {sorted(b)}")
  for name in a:
    if np.shape(a[name]) != np.shape(b[name]):
      raise ValueError(f"paired_difference: subject {name!r} has {np.shape(a[name])} "
                       f"queries in one model and {np.shape(b[name])} in the other")
  diff = {name: np.asarray(a[name], np.float64) - np.asarray(b[name], np.float64)
          for name in a}
  boot = bootstrap_query_means(diff, replicates, np.random.default_rng(seed))
  return {"difference": float(np.mean([d.mean() for d in diff.values()])),
          "ci95": np.percentile(boot, [2.5, 97.5]).tolist(), "replicates": int(replicates)}
