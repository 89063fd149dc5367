"""Scaling studies: the power-law fit and its bootstrap, and a tiny study end to end (three
files, reuse of finished runs)."""

import csv
import json

import numpy as np
import pytest

from jaxvna.configs import scaling_sim
from jaxvna.commands import scaling


def test_power_law_fit_recovers_known_parameters():
  n = np.geomspace(300, 20000, 6)
  fit = scaling.fit_power_law(n, 4.0 * n**-0.35 + 0.12)
  assert fit["a"] == pytest.approx(4.0, rel=1e-3)
  assert fit["exponent"] == pytest.approx(-0.35, abs=1e-4)
  assert fit["c"] == pytest.approx(0.12, abs=1e-4)
  noisy = 4.0 * n**-0.35 + 0.12 + np.random.default_rng(0).normal(0, 0.002, n.shape)
  assert scaling.fit_power_law(n, noisy)["exponent"] == pytest.approx(-0.35, abs=0.05)


def test_fit_refuses_too_few_points():
  with pytest.raises(ValueError, match="at least 3"):
    scaling.fit_power_law([100, 200], [0.5, 0.4])


def test_bootstrap_ci_contains_the_true_exponent():
  truth = dict(a=3.0, exponent=-0.5, c=0.15)
  n = np.array([250, 500, 1000, 2000, 4000, 8000])
  p_error = scaling.power_law(n, **truth)
  rng = np.random.default_rng(0)
  # Per-query successes of two subjects' held-out images, Bernoulli at the true error.
  runs = [{"n_train": int(k), "width": 1.0,
           "per_query": {s: {t: (rng.random(3000) > p).astype(float).tolist()
                             for t in scaling.TASKS} for s in ("a", "b")}}
          for k, p in zip(n, p_error)]
  error = [1 - np.mean([np.mean(r["per_query"][s][t]) for s in "ab" for t in scaling.TASKS])
           for r in runs]
  boot = scaling.bootstrap_errors(runs, replicates=300, seed=0)
  assert boot.shape == (300, len(n))
  fit = scaling.fit_with_bootstrap(n, error, boot)
  lo, hi = fit["exponent_ci95"]
  assert lo < truth["exponent"] < hi and hi < 0
  assert fit["c_ci95"][0] < truth["c"] < fit["c_ci95"][1]
  assert fit["bootstrap"] == {"replicates": 300, "failed_fits": 0}
  low, high = np.array(fit["curve"]["error_ci95"])
  assert np.all(low <= np.array(fit["curve"]["error"]) + 1e-9)
  assert np.all(np.array(fit["curve"]["error"]) <= high + 1e-9)


def test_width_scaling_multiplies_hidden_widths_only():
  model = scaling_sim.get_config().model
  wide = scaling.scale_widths(model, 2.0)
  assert tuple(wide.image_tower.channels) == (32, 64, 128)
  assert tuple(wide.image_tower.hidden) == (256,)
  assert wide.neural_tower.readin_dim == 256 and tuple(wide.neural_tower.hidden) == (512,)
  assert wide.embed_dim == model.embed_dim
  assert scaling.run_name(0.25, 1.0) == "0.25" and scaling.run_name(0.25, 2.0) == "0.25_w2"


def test_tiny_study_writes_csv_png_json_and_reuses_finished_runs(tmp_path, capsys):
  config = scaling_sim.get_config("tiny")
  # 150 steps, not the tiny 40: at 40 every run underfits and the error does not fall with
  # data (exponent +0.02); 150 steps cost about the same (compilation dominates).
  config.train.steps = config.train.checkpoint_every = 150
  out = scaling.run(config, tmp_path)
  assert "exponent 95% CI" in capsys.readouterr().out

  saved = json.loads((tmp_path / "scaling.json").read_text())
  assert saved == json.loads(json.dumps(out))
  for key in ("exponent", "exponent_ci95", "a", "c", "curve", "runs", "fits", "headline"):
    assert key in saved, key
  assert saved["width"] == 1.0 and set(saved["fits"]) == {"1"}
  assert saved["exponent_ci95"][0] <= saved["exponent_ci95"][1]
  # The error falls with data. Measured (seed 0, 2 CPU cores): errors 0.780, 0.740, 0.669
  # at 192, 384, 768 images; exponent -0.109, 95% CI [-1.66, -0.044]. No scaling is
  # exponent 0: floor margin 0.05 on the exponent, and the CI excludes 0.
  assert saved["exponent"] < -0.06
  assert saved["exponent_ci95"][1] < 0
  errors = [r["error"] for r in saved["runs"]]
  assert errors[0] > errors[1] > errors[2] and errors[0] - errors[2] > 0.06  # measured 0.111
  assert len(saved["curve"]["n"]) == len(saved["curve"]["error"]) == 50
  assert [r["fraction"] for r in saved["runs"]] == [0.25, 0.5, 1.0]
  n_train = [r["n_train"] for r in saved["runs"]]
  assert n_train[0] < n_train[1] < n_train[2]
  for r in saved["runs"]:
    assert 0 <= r["error"] <= 1
    assert r["error"] == pytest.approx(1 - (r["decoding_top1"] + r["encoding_top1"]) / 2)
    assert r["error_ci95"][0] <= r["error"] <= r["error_ci95"][1]
    run_dir = tmp_path / r["name"]
    assert (run_dir / "results.json").exists() and (run_dir / "checkpoints").is_dir()
    # The expected top-1 is the drawn accuracy of results.json without its draw noise.
    drawn = json.loads((run_dir / "results.json").read_text())["results"]["vna"]
    assert abs(drawn["decoding"]["10"]["top1"] - r["decoding_top1"]) < 0.05

  with open(tmp_path / "scaling.csv") as f:
    rows = list(csv.DictReader(f))
  assert [int(r["n_train"]) for r in rows] == n_train
  assert set(rows[0]) == {"fraction", "width", "n_train", "decoding_top1", "encoding_top1",
                          "error", "error_ci95_low", "error_ci95_high"}
  assert (tmp_path / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

  # A second call reuses every finished run: no training, the same numbers.
  metrics = {r["name"]: (tmp_path / r["name"] / "metrics.jsonl").read_text()
             for r in saved["runs"]}
  again = scaling.run(config, tmp_path)
  assert again["runs"] == out["runs"] and again["exponent"] == out["exponent"]
  for name, text in metrics.items():
    assert (tmp_path / name / "metrics.jsonl").read_text() == text


def test_study_refuses_too_few_fractions_and_other_methods(tmp_path):
  config = scaling_sim.get_config("tiny")
  config.scaling.fractions = (0.5, 1.0)
  with pytest.raises(ValueError, match="at least 3 distinct fractions"):
    scaling.run(config, tmp_path)
  config = scaling_sim.get_config("tiny")
  config.method = "mivae"
  with pytest.raises(ValueError, match="scaling supports"):
    scaling.run(config, tmp_path)
