"""`jaxvna new_subject`: a tiny study end to end (three files, both curves, accuracy above
chance), VNA's read-in fit changes the read-in alone, the plan of image counts, and a
held-out name that is no recording."""

import csv
import json

import jax
import numpy as np
import pytest

from jaxvna import cli, errors
from jaxvna.commands import new_subject
from jaxvna.configs import mivae_sim, vna_sim
from jaxvna.training import train


def tiny_config():
  """miVAE's tiny simulator (subject2 held out), 150 steps (at 60, scored centred, miVAE's
  all-image decoding was 0.134 [0.093, 0.18], its CI reaching chance); 64 images make the
  read-in's batch (train.batch_size) the same for both points: one compiled step."""
  c = mivae_sim.get_config("tiny")
  c.train.update(dict(steps=150, checkpoint_every=150, log_every=150))
  c.new_subject.update(dict(image_counts=(0, 64, 5000, -1), readin_steps=150))
  return c


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("new_subject")
  config = tiny_config()
  return config, workdir, new_subject.run(config, workdir)


def test_study_writes_csv_json_png_with_both_curves(study):
  _, workdir, out = study
  assert json.loads((workdir / "new_subject.json").read_text()) == out
  assert out["held_out"] == ["subject2"] and out["trained_on"] == ["subject0", "subject1"]
  assert out["settings"]["image_counts"] == [0, 64, 5000, -1]
  for method in ("vna", "mivae"):
    curve = out["methods"][method]["subject2"]
    n_train = curve["train_images"]
    assert [p["images"] for p in curve["points"]] == [64, n_train]
    assert [p["all"] for p in curve["points"]] == [False, True]
    omitted = {o["images"]: o["reason"] for o in curve["omitted"]}
    assert set(omitted) == {0, 5000}, omitted  # no read-in / tuning needs responses; too many
    assert f"{n_train} training images" in omitted[5000]
  assert "tuning" in {o["images"]: o["reason"]
                      for o in out["methods"]["mivae"]["subject2"]["omitted"]}[0]
  with open(workdir / "new_subject.csv") as f:
    rows = list(csv.DictReader(f))
  assert set(rows[0]) == {"method", "subject", "images", "task", "n_way", "top1", "ci_low",
                          "ci_high"}
  # 2 methods x 2 points x 2 tasks x 2 N.
  assert len(rows) == 16
  assert {(r["method"], r["task"], r["n_way"]) for r in rows} == {
      (m, t, n) for m in ("vna", "mivae") for t in ("decoding", "encoding") for n in "2 10".split()}
  for r in rows:
    assert float(r["ci_low"]) <= float(r["top1"]) <= float(r["ci_high"])
  assert (workdir / "new_subject.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert (workdir / "vna" / "checkpoints").is_dir() and (workdir / "mivae" / "checkpoints").is_dir()


def test_all_images_beat_chance(study):
  _, _, out = study
  for method in ("vna", "mivae"):
    best = out["methods"][method]["subject2"]["points"][-1]
    for task in ("decoding", "encoding"):
      r = best[task]["10"]
      assert r["top1_ci95"][0] > r["chance_top1"] == pytest.approx(0.1), (method, task, r)


def test_vna_readin_fit_changes_the_readin_alone(study):
  config, workdir, _ = study
  settings = new_subject.settings_of(config)
  vna = new_subject.method_config(config, "vna", ("subject2",))
  dataset = train.load_dataset(config)
  base = dataset.select(["subject0", "subject1"])
  _, state = train.restore_latest(vna, train.make_model(vna, base), base, workdir / "vna")
  params = state.params
  rec = dataset["subject2"]
  settings.readin_steps = 60
  fitter = new_subject.NewReadin(vna, params, rec, settings, seed=0)
  readin, losses = fitter.fit(new_subject.image_order(rec, 0, 0)[:64])
  assert losses.shape == (60,) and losses[-10:].mean() < losses[:10].mean()
  for key in readin:
    assert not np.allclose(readin[key], fitter.initial[key]), key
  # Every parameter but the read-in is the trained model's, to the bit.
  fitted = new_subject.with_subtree(fitter.frozen, new_subject.READIN, readin)
  flat = lambda tree: {jax.tree_util.keystr(p): np.asarray(v)
                       for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
  trained, after = flat(params), flat(fitted)
  readin_keys = {k for k in after if k.startswith("['neural_tower']['readin']")}
  assert readin_keys == {"['neural_tower']['readin']['bias']",
                         "['neural_tower']['readin']['kernel']"}
  assert after["['neural_tower']['readin']['kernel']"].shape == (
      1, rec.num_neurons, vna.model.neural_tower.readin_dim)
  for k in set(after) - readin_keys:
    np.testing.assert_array_equal(after[k], trained[k], err_msg=k)


def test_plan_drops_counts_beyond_the_training_images():
  ks, omitted = new_subject.plan_counts((0, 25, 50, 300, 200, -1), 200)
  assert ks == [0, 25, 50, 200]
  assert [o["images"] for o in omitted] == [300]
  order = new_subject.image_order(_recording(), seed=0, position=0)
  assert sorted(order) == list(range(0, 40, 2))


def _recording(coords=np.zeros((3, 0), np.float32)):
  from jaxvna.data import Recording
  n = 40
  return Recording("r", np.zeros((n, 4, 4, 1), np.uint8), np.ones((n, 2, 3), np.float32),
                   coords, np.arange(n) % 2, np.arange(n))


def test_response_free_table_standardises_by_the_training_subjects():
  coords = np.arange(6, dtype=np.float32).reshape(3, 2)
  train_table = {"center": np.array([[1.0, 2.0, 0.0], [3.0, 4.0, 5.0]], np.float32),
                 "scale": np.array([[0.5, 0.5, 1.0], [1.0, 2.0, 2.0]], np.float32),
                 "mask": np.array([[True, True, False], [True, True, True]])}
  table = new_subject.response_free_table(_recording(coords), ("coords",), train_table)
  np.testing.assert_array_equal(table["features"], coords[None])
  np.testing.assert_array_equal(table["center"], np.full((1, 3), 3.0))  # median of 1..5
  np.testing.assert_array_equal(table["scale"], np.full((1, 3), 1.0))
  assert table["mask"].all() and table["mask"].shape == (1, 3)


def test_settings_and_held_out_names_are_checked():
  config = tiny_config()
  config.new_subject.image_counts = (0, 2)
  with pytest.raises(errors.ConfigError, match=r"new_subject.image_counts"):
    new_subject.settings_of(config)
  config = tiny_config()
  config.new_subject.n_way = 50
  with pytest.raises(errors.ConfigError, match=r"new_subject.n_way=50"):
    new_subject.settings_of(config)


def test_a_config_without_any_runnable_method_is_a_config_error(tmp_path):
  config = vna_sim.get_config("tiny")  # no `mivae` block
  config.new_subject.methods = ("mivae",)
  with pytest.raises(errors.ConfigError, match=r"new_subject.methods: none can run .*mivae: "
                                               r"the config has no `mivae` block"):
    new_subject.run(config, tmp_path)


def test_bad_held_out_name_is_a_config_error(tmp_path):
  config = tiny_config()
  config.new_subject.held_out = ("subject9",)
  with pytest.raises(errors.ConfigError,
                     match=r"config.new_subject.held_out: \['subject9'\] are not recordings"):
    new_subject.run(config, tmp_path)
  assert not any(tmp_path.iterdir())  # nothing trained or written


def test_cli_has_the_command():
  command = cli.COMMANDS["new_subject"]
  assert command.holds_workdir and command.default_config == "mivae_sim.py"
  assert "new_subject" in cli.__doc__
