"""Tests of N-way identification on hand-built similarity matrices."""

import itertools
import time

import numpy as np
import pytest

from jaxvna.evaluation import identification as ident


def _random_embeddings(n, d=32, seed=0):
  return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def _exact_expected_credit(similarity, targets, groups, n_way, k):
  """Mean over queries of the expected top-k credit, by enumerating every distractor set."""
  credits = []
  for q, target in enumerate(targets):
    pool = [c for c in range(similarity.shape[1]) if groups[c] != groups[target]]
    true = similarity[q, target]
    n = min(n_way - 1, len(pool))
    sets = list(itertools.combinations(pool, n))
    total = 0.0
    for chosen in sets:
      scores = similarity[q, list(chosen)]
      beat, tied = np.sum(scores > true), np.sum(scores == true)
      # Uniform placement among ties: the fraction of placements inside the top k.
      total += np.clip((k - beat) / (tied + 1), 0, 1)
    credits.append(total / len(sets))
  return float(np.mean(credits))


@pytest.mark.parametrize("n_way", [2, 10, 50, "all"])
def test_identical_embeddings_are_always_identified(n_way):
  emb = _random_embeddings(120)
  result = ident.nway_accuracy(ident.cosine_similarity(emb, emb), n_way, draws=50)
  assert result["top1"] == 1.0 and result["top5"] == 1.0
  assert result["top1_ci95"] == [1.0, 1.0]


def test_random_embeddings_score_chance_within_ci():
  sim = ident.cosine_similarity(_random_embeddings(800, seed=1), _random_embeddings(800, seed=2))
  report = ident.identification_report(sim, n_ways=(2, 10), draws=300, seed=3)
  for n in (2, 10):
    r = report[str(n)]
    lo, hi = r["top1_ci95"]
    assert r["chance_top1"] == pytest.approx(1 / n)
    assert lo <= 1 / n <= hi, (n, r)
    assert r["chance_top5"] == pytest.approx(min(5, n) / n)
    lo5, hi5 = r["top5_ci95"]
    assert lo5 - 0.02 <= min(5, n) / n <= hi5 + 0.02


@pytest.mark.parametrize("n_way", [2, 10, 50, "all"])
def test_constant_similarity_scores_exactly_chance(n_way):
  sim = np.full((60, 60), 0.3)
  r = ident.nway_accuracy(sim, n_way, draws=20)
  n = 60 if n_way == "all" else n_way
  assert r["top1"] == pytest.approx(1 / n)
  assert r["top5"] == pytest.approx(min(5, n) / n)
  assert r["top1_ci95"] == pytest.approx([1 / n, 1 / n])


def _second_best_similarity(num=50, seed=0):
  """Every query's true candidate is beaten by exactly one other candidate."""
  rng = np.random.default_rng(seed)
  sim = rng.uniform(0.0, 0.5, size=(num, num))
  np.fill_diagonal(sim, 0.9)
  sim[np.arange(num), (np.arange(num) + 7) % num] = 1.0
  return sim


def test_second_best_gets_top1_zero_top5_one_against_all():
  r = ident.nway_accuracy(_second_best_similarity(), "all", topk=(1, 2, 5))
  assert r["top1"] == 0.0 and r["top2"] == 1.0 and r["top5"] == 1.0
  assert r["draws"] == 1


def test_second_best_at_n10_misses_only_when_the_beater_is_drawn():
  num = 50
  r = ident.nway_accuracy(_second_best_similarity(num), 10, draws=2000, seed=1)
  # The one beater is among the 9 distractors drawn from 49 with probability 9/49.
  assert r["top1"] == pytest.approx(1 - 9 / (num - 1), abs=0.01)
  assert r["top5"] == 1.0


def test_matches_exact_enumeration_with_ties_targets_and_groups():
  rng = np.random.default_rng(5)
  # Small integer scores create many ties; 8 queries over 7 candidates in 4 groups.
  sim = rng.integers(0, 3, size=(8, 7)).astype(np.float32)
  targets = np.array([0, 1, 2, 3, 4, 5, 6, 0])
  groups = np.array([0, 0, 1, 1, 2, 2, 3])
  for n_way in (2, 3, 4):
    r = ident.nway_accuracy(sim, n_way, draws=4000, topk=(1, 2), seed=n_way,
                            targets=targets, candidate_groups=groups)
    for k in (1, 2):
      exact = _exact_expected_credit(sim, targets, groups, n_way, k)
      assert r[f"top{k}"] == pytest.approx(exact, abs=0.01), (n_way, k)


def test_ci_brackets_mean_and_chance_is_k_over_n():
  sim = ident.cosine_similarity(_random_embeddings(300, seed=4),
                                _random_embeddings(300, seed=4) + _random_embeddings(300, seed=5))
  report = ident.identification_report(sim, draws=200)
  assert list(report) == ["2", "10", "50", "100", "all"]
  for key, r in report.items():
    for k in (1, 5):
      lo, hi = r[f"top{k}_ci95"]
      assert lo <= r[f"top{k}"] <= hi, (key, k)
    n = 300 if key == "all" else int(key)
    assert r["chance_top1"] == pytest.approx(1 / n)
    assert r["chance_top5"] == pytest.approx(min(5, n) / n)
  # Harder with more candidates.
  tops = [report[key]["top1"] for key in report]
  assert all(a > b for a, b in zip(tops, tops[1:]))


def test_all_and_n_at_least_c_are_one_deterministic_draw():
  sim = ident.cosine_similarity(_random_embeddings(40, seed=6), _random_embeddings(40, seed=7))
  every = ident.nway_accuracy(sim, "all", draws=100, seed=0)
  for n_way in (40, 41, 1000):
    r = ident.nway_accuracy(sim, n_way, draws=100, seed=1)
    assert r["draws"] == 1 and r["top1"] == every["top1"] and r["top5"] == every["top5"]
    assert r["top1_ci95"] == [r["top1"], r["top1"]]
  assert every["n_way"] == "all" and every["mean_candidates_per_query"] == 40
  # Exhaustive top-1 is the argmax rule.
  assert every["top1"] == pytest.approx(np.mean(np.argmax(sim, axis=1) == np.arange(40)))


def test_deterministic_given_seed():
  sim = ident.cosine_similarity(_random_embeddings(200, seed=8), _random_embeddings(200, seed=9))
  a = ident.nway_accuracy(sim, 10, draws=50, seed=11)
  b = ident.nway_accuracy(sim, 10, draws=50, seed=11)
  c = ident.nway_accuracy(sim, 10, draws=50, seed=12)
  assert a == b
  assert a["top1"] != c["top1"]
  assert ident.identification_report(sim, n_ways=(10,), draws=50, seed=11)["10"] == a


def test_topk_at_least_n_always_succeeds():
  sim = ident.cosine_similarity(_random_embeddings(30, seed=1), _random_embeddings(30, seed=2))
  r = ident.nway_accuracy(sim, 2, topk=(1, 2, 5), draws=10)
  assert r["top2"] == 1.0 and r["top5"] == 1.0 and r["top1"] < 1.0


def test_similarity_helpers_match_numpy():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(5, 9)), rng.normal(size=(7, 9)) + 2.0
  expected_cos = (a @ b.T) / np.outer(np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1))
  np.testing.assert_allclose(ident.cosine_similarity(a, b), expected_cos, rtol=1e-10)
  expected_r = np.corrcoef(a, b)[:5, 5:]
  np.testing.assert_allclose(ident.pearson_similarity(a, b), expected_r, rtol=1e-10)
  np.testing.assert_allclose(ident.similarity_matrix(a, b, "pearson"), expected_r, rtol=1e-10)
  # Degenerate rows carry no information: similarity 0, never NaN.
  b[0] = 3.0
  assert np.all(ident.pearson_similarity(a, b)[:, 0] == 0)
  assert np.all(ident.cosine_similarity(np.zeros((2, 9)), b) == 0)
  with pytest.raises(ValueError, match="metric"):
    ident.similarity_matrix(a, b, "euclid")


def test_single_trial_queries_skip_unrecorded_repeats():
  responses = np.full((3, 3, 2), np.nan, np.float32)
  responses[0, :2] = [[1, 2], [3, 4]]
  responses[1, :3] = [[5, 6], [7, 8], [9, 10]]
  responses[2, :1] = [[11, 12]]
  trials, images = ident.single_trial_queries(responses)
  np.testing.assert_array_equal(images, [0, 0, 1, 1, 1, 2])
  np.testing.assert_array_equal(trials[:, 0], [1, 3, 5, 7, 9, 11])


def _trial_embeddings(num_images=40, repeats=3, noise=0.05, seed=0):
  """Image embeddings and noisy single-trial neural embeddings of every image."""
  rng = np.random.default_rng(seed)
  image_emb = rng.normal(size=(num_images, 16))
  responses = image_emb[:, None] + noise * rng.normal(size=(num_images, repeats, 16))
  responses[::4, -1] = np.nan  # some images lack their last repeat
  return image_emb, responses


def test_single_trial_decoding_uses_targets():
  image_emb, responses = _trial_embeddings()
  trials, trial_images = ident.single_trial_queries(responses)
  sim, targets, groups = ident.discriminative_similarity(
      trials, image_emb, task="decoding", trial_images=trial_images)
  assert sim.shape == (len(trials), 40) and groups is None
  np.testing.assert_array_equal(targets, trial_images)
  report = ident.discriminative_scores(trials, image_emb, task="decoding",
                                       trial_images=trial_images, n_ways=(10, "all"), draws=20)
  assert report["10"]["top1"] == 1.0 and report["all"]["top1"] == 1.0
  # Pointing each trial at the next image makes every query wrong against all.
  wrong = ident.nway_accuracy(sim, "all", targets=(trial_images + 1) % 40)
  assert wrong["top1"] == 0.0


def test_single_trial_encoding_excludes_own_image_trials():
  image_emb, responses = _trial_embeddings(repeats=4, noise=0.0)
  trials, trial_images = ident.single_trial_queries(responses)
  sim, targets, groups = ident.discriminative_similarity(
      trials, image_emb, task="encoding", trial_images=trial_images)
  np.testing.assert_array_equal(targets, np.arange(len(trials)))
  np.testing.assert_array_equal(groups, trial_images)
  np.testing.assert_allclose(sim, ident.cosine_similarity(image_emb, trials)[trial_images])
  # Noise-free trials of one image tie with each other; without the groups those
  # repeats would be drawn as distractors and tie with the truth.
  r = ident.nway_accuracy(sim, "all", targets=targets, candidate_groups=groups)
  assert r["top1"] == pytest.approx(1.0)
  assert r["mean_candidates_per_query"] < len(trials)
  ungrouped = ident.nway_accuracy(sim, "all", targets=targets)
  assert ungrouped["top1"] < 0.5


def test_encoding_is_the_transpose_of_decoding_when_averaged():
  rng = np.random.default_rng(0)
  neural, image = rng.normal(size=(25, 8)), rng.normal(size=(25, 8))
  dec, dec_targets, _ = ident.discriminative_similarity(neural, image, task="decoding")
  enc, enc_targets, _ = ident.discriminative_similarity(neural, image, task="encoding")
  np.testing.assert_allclose(enc, dec.T, rtol=1e-6)
  np.testing.assert_array_equal(dec_targets, np.arange(25))
  np.testing.assert_array_equal(enc_targets, np.arange(25))
  # Direct encoding baseline: measured vs predicted responses, Pearson.
  measured, predicted = rng.normal(size=(25, 30)), rng.normal(size=(25, 30))
  sim, _, _ = ident.discriminative_similarity(measured, predicted, task="decoding",
                                              metric="pearson")
  np.testing.assert_allclose(sim, np.corrcoef(measured, predicted)[:25, 25:], rtol=1e-5)


def test_bad_inputs_raise_clear_errors():
  sim = np.eye(4)
  with pytest.raises(ValueError, match="n_way"):
    ident.nway_accuracy(sim, 1)
  with pytest.raises(ValueError, match="n_way"):
    ident.nway_accuracy(sim, "half")
  with pytest.raises(ValueError, match="targets"):
    ident.nway_accuracy(np.ones((3, 4)), 2)
  with pytest.raises(ValueError, match="targets"):
    ident.nway_accuracy(sim, 2, targets=np.array([0, 1, 2, 4]))
  with pytest.raises(ValueError, match="non-finite"):
    ident.nway_accuracy(np.full((3, 3), np.nan), 2)
  with pytest.raises(ValueError, match="no possible distractor"):
    ident.nway_accuracy(sim, 2, candidate_groups=np.zeros(4, int))
  with pytest.raises(ValueError, match="task"):
    ident.discriminative_similarity(sim, sim, task="both")
  with pytest.raises(ValueError, match="trial_images"):
    ident.discriminative_similarity(np.ones((6, 4)), sim, task="decoding")


def test_speed_large_matrix():
  num = 10_000
  rng = np.random.default_rng(0)
  emb = rng.normal(size=(num, 32)).astype(np.float32)
  start = time.perf_counter()
  sim = ident.cosine_similarity(emb, emb + rng.normal(size=emb.shape).astype(np.float32))
  r = ident.nway_accuracy(sim, 10, draws=200)
  elapsed = time.perf_counter() - start
  print(f"\n{num} x {num}, N=10, 200 draws: {elapsed:.2f} s (top1 {r['top1']:.3f})")
  assert r["draws"] == 200 and 0.1 < r["top1"] < 1.0


@pytest.mark.parametrize("n_way", [2, 10, "all"])
def test_chance_variance_is_the_scatter_of_uninformative_rankings(n_way):
  """The sd of the N-way top-1 of random similarities over many query sets."""
  rng = np.random.default_rng(0)
  q = 150
  accs = [ident.nway_accuracy(rng.normal(size=(q, q)), n_way, draws=20, seed=i)["top1"]
          for i in range(300)]
  sd = ident.chance_top1_variance(q - 1, n_way, q) ** 0.5
  assert np.std(accs) == pytest.approx(sd, rel=0.15)
  assert np.mean(accs) == pytest.approx(1 / (q if n_way == "all" else n_way), abs=0.3 * sd)


@pytest.mark.parametrize("n_way", [2, 10, 50, "all"])
def test_expected_top1_is_the_limit_of_the_drawn_accuracy(n_way):
  rng = np.random.default_rng(0)
  # Rounding makes ties, which both sides score by the same rule.
  similarity = np.round(rng.normal(size=(200, 200)) + 1.5 * np.eye(200), 1)
  expected = ident.expected_top1(similarity, np.arange(200), n_way)
  drawn = ident.nway_accuracy(similarity, n_way, draws=4000, seed=1)
  assert expected.shape == (200,) and 0 <= expected.min() and expected.max() <= 1
  assert abs(expected.mean() - drawn["top1"]) < 2e-3


def test_expected_top1_of_a_perfect_and_a_constant_similarity():
  np.testing.assert_allclose(ident.expected_top1(np.eye(30), np.arange(30), 10), 1.0)
  np.testing.assert_allclose(ident.expected_top1(np.zeros((30, 30)), np.arange(30), 10), 0.1)


def test_expected_success_from_query_ranks_matches_at_every_n():
  rng = np.random.default_rng(2)
  similarity = np.round(rng.normal(size=(60, 60)) + np.eye(60), 1)
  ranks = ident.query_ranks(similarity)
  assert ranks["num_candidates"] == 60
  np.testing.assert_array_equal(ranks["greater"],
                                (similarity > np.diag(similarity)[:, None]).sum(1))
  for n_way in (2, 10, "all"):
    drawn = ident.nway_accuracy(similarity, n_way, draws=4000, seed=3)["top1"]
    success = ident.expected_success(ranks["greater"], ranks["ties"], 60, n_way)
    assert abs(success.mean() - drawn) < 3e-3


def test_bootstrap_query_means_resamples_each_subjects_queries():
  values = {"a": np.array([[0.0, 1.0], [2.0, 2.0]]),
            "b": np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 3.0]])}
  boot = ident.bootstrap_query_means(values, 4000, np.random.default_rng(0))
  assert boot.shape == (4000, 2)
  # Row 0: subject a's mean is 0, 0.5 or 1 (1/4, 1/2, 1/4), b's is always 1.
  np.testing.assert_allclose(np.unique(boot[:, 0]), [0.5, 0.75, 1.0])
  assert boot[:, 0].mean() == pytest.approx(0.75, abs=0.01)
  assert boot[:, 0].std() == pytest.approx(np.sqrt(0.125) / 2, rel=0.05)


def test_paired_difference_is_narrower_than_the_unpaired_spread():
  rng = np.random.default_rng(4)
  # Queries differ a lot in difficulty; b is a with a fifth of its successes lost.
  a = rng.uniform(0, 1, 200)
  b = a * np.where(rng.uniform(size=200) < 0.2, 0.0, 1.0)
  out = ident.paired_difference({"s": a}, {"s": b}, replicates=2000, seed=0)
  assert out["difference"] == pytest.approx(a.mean() - b.mean())
  lo, hi = out["ci95"]
  assert 0 < lo < out["difference"] < hi
  unpaired_sd = np.hypot(a.std(), b.std()) / np.sqrt(200)
  assert (hi - lo) < 0.7 * 3.92 * unpaired_sd
  # Identical models differ by exactly nothing; mismatched query sets are refused.
  same = ident.paired_difference({"s": a}, {"s": a})
  assert same["difference"] == 0 and same["ci95"] == [0.0, 0.0]
  with pytest.raises(ValueError, match="queries"):
    ident.paired_difference({"s": a}, {"s": a[:-1]})
  with pytest.raises(ValueError, match="subjects"):
    ident.paired_difference({"s": a}, {"t": a})
