"""`jaxvna demo`: its result file (every method with its null control, the provenance),
the null controls at chance while the trained models are not, and `jaxvna eval` of a
demo method re-evaluating its null control from its checkpoint."""

import json

import pytest

from jaxvna.commands import demo
from jaxvna.configs import vna_sim
from jaxvna.data import dataset as dataset_lib
from jaxvna.training import train
from toy_recordings import vna_demo_run


def tiny_config():
  c = vna_sim.get_config("vna,tiny")
  c.train.update(steps=40, log_every=20, checkpoint_every=40)
  c.eval.gabor_ridge = True
  return c


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
  return vna_demo_run(tiny_config(), tmp_path_factory.mktemp("demo"))


def test_results_file_holds_each_method_its_null_control_and_provenance(demo_run):
  out = json.loads((demo_run / "results.json").read_text())
  assert set(out["results"]) == {"vna", "gabor_ridge"}
  for method, res in out["results"].items():
    check = res["null_control"]["chance_check"]
    assert check["at_chance"], (method, check)
    for task in ("decoding", "encoding"):
      assert set(check[task]) == {"2", "10"}
  prov = out["provenance"]
  assert prov["command"] and prov["config"]["method"] == "vna"
  assert prov["data"]["fingerprint"] == dataset_lib.fingerprint(
      train.load_dataset(tiny_config()))
  assert prov["devices"]["count"] >= 1 and prov["wall_time_s"] > 0
  assert set(prov["versions"]) >= {"jax", "flax", "optax"}
  assert "null control" in demo.null_control_table(out["results"])


def test_trained_models_are_off_chance_where_their_null_controls_are_not(demo_run):
  """The check separates: run on the trained models' own reports it finds them off chance.
  Measured 10-way decoding top-1: VNA 0.29, ridge 0.37 (chance 0.10, band up to 0.15)."""
  from jaxvna.evaluation import discriminative
  results = json.loads((demo_run / "results.json").read_text())["results"]
  for method in ("vna", "gabor_ridge"):
    trained = discriminative.chance_check(results[method])
    assert not trained["at_chance"]
    assert not trained["decoding"]["10"]["at_chance"], method


def test_contrastive_results_carry_the_infonce_bound(demo_run):
  results = json.loads((demo_run / "results.json").read_text())["results"]["vna"]
  bound, null = results["infonce"], results["null_control"]["infonce"]
  # The training batch, capped at the held-out images of a subject.
  held_out = results["decoding"]["2"]["num_queries"]
  assert bound["batch_size"] == min(tiny_config().train.batch_size, held_out) == 60
  assert bound["bound_nats"] == pytest.approx(bound["log_batch_size"] - bound["loss"])
  # Trained on real pairs the held-out bound is positive; on shuffled pairs it is not
  # (measured 0.19 and -0.10 nats at this scale).
  assert bound["bound_nats"] > 0.05 > null["bound_nats"]


def test_eval_re_evaluates_the_null_control_from_its_checkpoint(demo_run):
  workdir = demo_run / "vna"
  before = json.loads((workdir / "results.json").read_text())["results"]["vna"]
  config = tiny_config()
  config.method = "vna"
  after = train.evaluate_workdir(config, workdir)["results"]["vna"]
  assert after["null_control"]["decoding"] == before["null_control"]["decoding"]
  assert after["decoding"] == before["decoding"]


def _run(subject: str, top1: dict[str, tuple[float, float]],
         greater: dict[str, list[int]] | None = None) -> dict:
  """A results dict of one subject: each method's 10-way top-1 and CI half-width, the same
  for both tasks, and for the methods in `greater` the query ranks of both tasks (each
  query's count of candidates above the true one, out of 10: at N = 10 a query succeeds
  exactly when that count is 0)."""
  cell = lambda acc, half: {"top1": acc, "top1_ci95": [acc - half, acc + half]}
  runs = {m: {"per_subject": {subject: {t: {"10": cell(*v)} for t in ("decoding",
                                                                       "encoding")}}}
          for m, v in top1.items()}
  for m, counts in (greater or {}).items():
    ranks = {"greater": counts, "ties": [0] * len(counts), "num_candidates": 10}
    runs[m]["per_subject"][subject]["query_ranks"] = {"decoding": ranks, "encoding": ranks}
  return runs


def test_stacked_table_and_counts_over_sessions_alone():
  runs = [_run("a", {"vna": (0.6, 0.05), "direct_encoding": (0.4, 0.05),
                     "direct_decoding": (0.2, 0.05), "gabor_lit": (0.5, 0.05),
                     "gabor_ridge": (0.55, 0.05)}),
          _run("b", {"vna": (0.5, 0.05), "direct_encoding": (0.45, 0.05),
                     "direct_decoding": (0.2, 0.05), "gabor_lit": (0.7, 0.05),
                     "gabor_ridge": (0.75, 0.05)})]
  # Session b's VNA null control leaves chance's band at 10-way decoding.
  runs[1]["vna"]["null_control"] = {"chance_check": {
      "decoding": {"10": {"at_chance": False}}, "encoding": {"10": {"at_chance": True}},
      "subjects": ["b"]}}
  table = demo.per_subject_table(runs, methods=demo.FAMILY_TABLE_METHODS).splitlines()
  assert len(table) == 2 + 4 and table[0].count("|") == 10
  assert table[2].startswith("| a | decoding | 0.600 [0.55, 0.65]")
  assert table[2].endswith("| yes | +0.050 |") and table[4].endswith("| no | -0.050 |")
  assert demo.per_subject_summary(runs, methods=demo.FAMILY_TABLE_METHODS).splitlines() == [
      "decoding: VNA beats both direct (CIs apart) in 1 of 2; VNA family >= gabor_ridge in"
      " 1 of 2 (gap -0.050 to +0.050)",
      "encoding: VNA beats both direct (CIs apart) in 1 of 2; VNA family >= gabor_ridge in"
      " 1 of 2 (gap -0.050 to +0.050)",
      "null controls outside chance's 99% band: 1 of 2 cells (b vna decoding N=10)"]
  # Without Gabor-LiT, no family column and no family count.
  assert "family" not in demo.per_subject_summary(runs)


def test_ensemble_report_compares_ensemble_with_ensemble():
  single = {"vna": (0.5, 0.05), "direct_encoding": (0.45, 0.05), "direct_decoding": (0.2, 0.05),
            "gabor_lit": (0.55, 0.05), "gabor_ridge": (0.6, 0.05)}
  # Paired on the same ten images: in "a" VNA's ensemble finds all ten, direct encoding's
  # five (difference +0.5); in "b" both find the same six (difference exactly 0).
  runs = [_run("a", dict(single, vna_ensemble=(0.62, 0.05),
                         direct_encoding_ensemble=(0.50, 0.05)),
               {"vna_ensemble": [0] * 10, "direct_encoding_ensemble": [0] * 5 + [3] * 5}),
          # VNA's ensemble clears direct encoding's single model but not its ensemble;
          # Gabor-LiT's ensemble is the family's best.
          _run("b", dict(single, vna_ensemble=(0.58, 0.05), direct_encoding_ensemble=(0.50, 0.05),
                         gabor_lit_ensemble=(0.57, 0.05)),
               {"vna_ensemble": [0] * 6 + [1] * 4, "direct_encoding_ensemble": [0] * 6 + [1] * 4}),
          _run("c", single),  # no ensembles: left out
          # Files without query ranks: the paired cell is "-" and counts as not above.
          _run("d", dict(single, vna_ensemble=(0.62, 0.05),
                         direct_encoding_ensemble=(0.50, 0.05)))]
  lines = demo.ensemble_report(runs).splitlines()
  assert len(lines) == 2 + 6 + 1 + 2 and lines[0].count("|") == 12
  assert lines[6].startswith("| d | decoding") and lines[6].endswith("| yes | - | +0.020 |")
  assert lines[2].startswith("| a | decoding | 0.620 [0.57, 0.67] | 0.500 [0.45, 0.55] | 0.200 "
                             "[0.15, 0.25] | 0.550 [0.50, 0.60] | - | 0.600 [0.55, 0.65] | yes "
                             "| +0.500 [+0.")
  assert lines[2].endswith("] | +0.020 |")
  lo, hi = (float(x) for x in lines[2].split("+0.500 [")[1].split("]")[0].split(", "))
  assert 0.1 < lo < 0.5 < hi <= 0.9  # 10 queries, half of them won: a wide interval
  assert lines[4] == ("| b | decoding | 0.580 [0.53, 0.63] | 0.500 [0.45, 0.55] | 0.200 [0.15,"
                      " 0.25] | 0.550 [0.50, 0.60] | 0.570 [0.52, 0.62] | 0.600 [0.55, 0.65] |"
                      " no | +0.000 [+0.00, +0.00] | -0.020 |")
  assert lines[-2:] == [
      f"{task}: VNA's ensemble beats both direct (CIs apart) in 2 of 3; above direct "
      "encoding's ensemble, paired interval above 0, in 1 of 3; VNA family >= gabor_ridge in"
      " 2 of 3 (gap -0.020 to +0.020)" for task in ("decoding", "encoding")]


