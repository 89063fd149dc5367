"""The README's result tables are the result files in results/, written by the commands
that produced them: a table edited by hand, or a file re-generated without its table,
fails here."""

import functools
import json
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jaxvna.commands import demo
from jaxvna.evaluation import discriminative

REPO = pathlib.Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _result_file(name):
  return json.loads((REPO / "results" / f"{name}.json").read_text())


def _results(name):
  return _result_file(name)["results"]


def _indented(text):
  return "\n".join("    " + line for line in text.splitlines())


@pytest.mark.parametrize("name", ["demo", "v4", "v4_alone_201025", "allen_v1"])
def test_readme_mean_table_is_the_result_file(name):
  """`jaxvna demo` (results/demo.json) and benchmarks/real_v4.py (results/v4.json, and one
  session alone)."""
  table = demo.results_table(_results(name))
  assert _indented(table) in README, f"README's table of results/{name}.json differs:\n{table}"


def test_readme_v4_session_table_is_the_result_file():
  table = demo.per_subject_table(_results("v4"), "10")
  assert table in README, f"README's V4 session table differs from results/v4.json:\n{table}"
  # The count the text states is the table's.
  beats = sum(row.endswith("| yes |") for row in table.splitlines())
  assert f"in {beats} of the {len(table.splitlines()) - 2} session x task cells" in README


@pytest.mark.parametrize("name", ["demo", "v4", "v4_alone_201025", "allen_v1"])
def test_readme_null_control_table_is_the_result_file_and_at_chance(name):
  results = _results(name)
  table = demo.null_control_table(results)
  assert _indented(table) in README, f"README's null controls of results/{name}.json differ:\n{table}"
  # Every null row at chance but one: on the simulator, direct encoding's null decodes at
  # 2-way 0.531 (band 0.481-0.519) and at 10-way 0.1144 (band to 0.1138). The band covers
  # the query sample, not the null model's own chance alignment; a new leak elsewhere fails.
  off = {(method, *task_n) for method, res in results.items()
         for task_n in discriminative.off_chance(res["null_control"]["chance_check"])}
  assert off == ({("direct_encoding", "decoding", "2"), ("direct_encoding", "decoding", "10")}
                 if name == "demo" else set())


def _result_files():
  return sorted((REPO / "results").glob("*.json"))


def _alone_paths():
  """results/v4_alone_<session>.json, one per V4 session trained alone, in file order."""
  return sorted((REPO / "results").glob("v4_alone_*.json"))


@pytest.mark.parametrize("path", _result_files(), ids=lambda p: p.stem)
def test_every_result_file_names_its_command_and_is_listed_in_the_readme(path):
  provenance = json.loads(path.read_text())["provenance"]
  for field in ("command", "config", "jaxvna", "versions", "data", "devices", "wall_time_s"):
    assert provenance[field] is not None, (path.name, field)
  assert provenance["jaxvna"]["commit"], path.name
  assert f"| `results/{path.name}` | `{provenance['command']}` |" in README, path.name


def _formatters():
  """{result name: the summary table that its command prints, from the file's content}."""
  from jaxvna.commands import new_subject, scaling, select
  from jaxvna.methods.dina import interpret
  from jaxvna.methods.migvis import visualize
  from jaxvna.methods.mivae import evaluation as mivae_evaluation
  mivae = lambda out: mivae_evaluation.summary_table(out["results"]["mivae"])
  null = lambda out: demo.null_control_table(out["results"])  # a `jaxvna train` run's null
  return {"new_subject_sim": new_subject.summary_table, "new_subject_v4": new_subject.summary_table,
          "scaling_sim": scaling.summary_table, "scaling_v4": scaling.summary_table,
          "mivae_sim": mivae, "mivae_sim_seed1": mivae, "mivae_v4": mivae,
          "dina_sim": null,
          "dina_interpret_sim": interpret.summary_table,
          "dina_interpret_v4": interpret.summary_table,
          "migvis_sim": visualize.summary_table, "migvis_sim_validation": visualize.summary_table,
          "migvis_v4": visualize.summary_table, "migvis_v4_pooled": visualize.summary_table,
          "direct_encoding_null_seed1": null, "direct_encoding_null_seed2": null,
          "select_v4_201025": select.summary_table,
          "select_gabor_lit_v4_201025": select.summary_table}


@pytest.mark.parametrize("name", list(_formatters()))
def test_readme_summary_table_is_the_result_file(name):
  table = _formatters()[name](_result_file(name))
  shown = table if table.startswith("|") else _indented(table)
  assert shown in README, f"README's table of results/{name}.json differs:\n{table}"


@pytest.mark.parametrize("path", [p for p in _result_files() if p.stem != "demo"],
                         ids=lambda p: p.stem)
def test_every_null_control_in_the_result_files_sits_at_chance(path):
  """Every null row of every result file at every N, but the pinned exceptions (the
  demo's are pinned above), each discussed in the README: the draw of one null model
  (where more seeds were run, benchmarks/null_spread.py, their mean sits at chance). A new
  excursion anywhere fails."""
  exceptions = {# miVAE at seed 1: the held-out subject of the neuron control at 2-way
                # (0.573 / 0.576, band to 0.533) and 10-way encoding (0.135, band to 0.124)
                ("mivae_sim_seed1", "mivae", "null_neurons"): {("decoding", "2"),
                                                               ("encoding", "2"),
                                                               ("encoding", "10")},
                # On V4, with the neuron identities shuffled, the held-out sessions keep a
                # residual above chance at 2-way (0.576 / 0.579, band to 0.557): seed 0 is
                # the top of four, whose mean sits at chance (README, miVAE).
                # session 190923 alone: Gabor-LiT's shuffled pairs at 50-way encoding
                # 0.048 (band to 0.047), at chance at every other N
                ("v4_alone_190923", "gabor_lit", "null_control"): {("encoding", "50")},
                # session 190925 alone: two shuffled-pairs rows BELOW chance at 2-way
                # decoding (direct encoding 0.394, Gabor-ridge 0.427; band from 0.436)
                ("v4_alone_190925", "direct_encoding", "null_control"): {("decoding", "2")},
                ("v4_alone_190925", "gabor_ridge", "null_control"): {("decoding", "2")},
                # session 190929 alone: direct encoding's shuffled pairs BELOW chance at
                # 2-way and 10-way decoding (0.413 and 0.048; band from 0.435 and 0.053)
                ("v4_alone_190929", "direct_encoding", "null_control"): {("decoding", "2"),
                                                                         ("decoding", "10")},
                # with 30% neuron dropout the same residual: 2-way 0.561 / 0.588 (band to
                # 0.557)
                ("mivae_v4_neuron_dropout_0.3", "mivae", "null_neurons"): {
                    ("decoding", "2"), ("encoding", "2")},
                # session 210305 alone (44 test images): VNA's shuffled pairs at 10-way
                # 0.204 / 0.186 and all-44-way encoding 0.091 (bands to 0.186 and 0.081)
                ("v4_alone_210305", "vna", "null_control"): {("decoding", "10"),
                                                             ("encoding", "10"),
                                                             ("encoding", "50")},
                ("mivae_v4", "mivae", "null_neurons"): {("decoding", "2"), ("encoding", "2")}}
  results = json.loads(path.read_text()).get("results", {})
  for method, res in results.items():
    for control in ("null_control", "null_neurons"):
      if control in res:
        off = set(discriminative.off_chance(res[control]["chance_check"]))
        assert off == exceptions.get((path.stem, method, control), set()), (path.name, method)


def test_readme_image_weight_table_is_the_result_files():
  from jaxvna.methods.mivae import evaluation as mivae_evaluation
  runs = [_result_file(f"mivae_sim_image_weight_{w}") for w in ("0.05", "0.01", "0.003")]
  table = mivae_evaluation.sweep_table(runs)
  assert table in README, f"README's image_weight table differs from its files:\n{table}"


EDITING_ROWS = ("shipped", "seed1", "seed2", "target_bank512", "bank512", "s300", "t0.2", "sd2")


def test_readme_editing_settings_table_is_the_result_files():
  """results/migvis_editing: each row's test and validation files, written by the same
  command but for the split, on models trained once (the same critic bounds)."""
  from jaxvna.methods.migvis import visualize
  from jaxvna.training import provenance
  folder = REPO / "results" / "migvis_editing"
  assert sorted(p.name for p in folder.iterdir()) == sorted(
      f"{row}_{split}.json" for row in EDITING_ROWS for split in ("test", "validation"))
  runs = []
  for row in EDITING_ROWS:
    test, validation = (json.loads((folder / f"{row}_{split}.json").read_text())
                        for split in ("test", "validation"))
    commands = [r["provenance"]["command"] for r in (test, validation)]
    assert all(c.startswith("jaxvna visualize --config=configs/migvis_sim.py --workdir=")
               for c in commands), commands
    assert (provenance.config_overrides(commands[1], drop=("eval.migvis.split",))
            == provenance.config_overrides(commands[0])), commands
    assert "--config.eval.migvis.split=validation" in commands[1].split()
    assert test["critic_mi_bound"] == json.loads(
        (folder / "shipped_test.json").read_text())["critic_mi_bound"], row
    runs.append((test, validation))
  table = visualize.settings_table(runs)
  assert table in README, f"README's editing-settings table differs from its files:\n{table}"


@pytest.mark.parametrize("name", ["training_throughput", "training_throughput_h200"])
def test_readme_throughput_table_is_the_benchmark_file(name):
  """benchmarks/training_throughput.py's table of its own result file (2 CPU cores; one
  H200 GPU in f32 and bf16)."""
  result = json.loads((REPO / "benchmarks" / "results" / f"{name}.json").read_text())
  table = _benchmark("training_throughput").summary_table(result)
  assert table in README, f"README's table of benchmarks/results/{name}.json differs:\n{table}"


@functools.cache
def _benchmark(name):
  """The module benchmarks/<name>.py (benchmarks/ is not a package), loaded once: its absl
  flags can be defined only once a process."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("path", sorted((REPO / "results").glob("null_spread_*.json")),
                         ids=lambda p: p.stem)
def test_readme_null_spread_table_is_the_file_and_its_spread_the_seeds(path):
  """benchmarks/null_spread.py: the README's table is the file's, and the spread in the
  file is the one its seeds' chance checks give."""
  module = _benchmark("null_spread")
  result = json.loads(path.read_text())
  table = module.spread_table(result)
  assert table in README, f"README's table of {path.name} differs:\n{table}"
  assert len(result["seeds"]) >= 2
  for control, checks in result["checks"].items():
    assert len(checks) == len(result["seeds"]), control
    assert module.spread(checks) == result["spread"][control], control


def test_readme_mivae_null_source_table_is_the_file_and_centring_is_at_chance():
  """benchmarks/mivae_null_source.py: the README's table is the file's, its summary is its
  seeds', and scored centred (as miVAE now scores) the pairs control's mean over seeds
  is at chance where the raw scoring's was above it."""
  module = _benchmark("mivae_null_source")
  result = _result_file("mivae_null_source_sim")
  table = module.source_table(result)
  assert table in README, f"README's table of mivae_null_source_sim.json differs:\n{table}"
  assert module.summary(result["per_seed"]) == result["summary"]
  for task in ("decoding", "encoding"):
    for n_way in ("2", "10"):
      low, high = result["summary"][f"centred/{task}/{n_way}"]["interval"]
      assert low <= 1 / int(n_way) <= high, (task, n_way)
  assert result["summary"]["raw/encoding/2"]["interval"][0] > 0.5


def test_mivae_null_source_geometry_reads_the_mean_direction():
  module = _benchmark("mivae_null_source")
  rng = np.random.default_rng(0)
  n, mean = 200, np.eye(8)[0] * 4
  salience = rng.uniform(0.2, 2.0, n)
  noise = lambda: salience[:, None] * rng.normal(size=(n, 8))
  images = 0.5 + salience[:, None, None] * rng.choice([-0.1, 0.1], size=(n, 6, 6))
  g = module.geometry(mean + noise(), mean + noise(), images, np.expm1(salience)[:, None])
  assert g["cos_means"] > 0.9
  # Salient items lie far from the mean direction, on both sides and for the same pairs.
  assert g["alignment_contrast"] < -0.5 and g["alignment_drive"] < -0.5
  assert g["alignment_pairs"] > 0.3


# (spread file, seed, the result file whose run made that seed's controls, its method)
SPREAD_SEEDS = [("null_spread_direct_encoding_sim", 0, "demo", "direct_encoding"),
                ("null_spread_direct_encoding_sim", 1, "direct_encoding_null_seed1",
                 "direct_encoding"),
                ("null_spread_direct_encoding_sim", 2, "direct_encoding_null_seed2",
                 "direct_encoding"),
                ("null_spread_mivae_sim", 0, "mivae_sim", "mivae"),
                ("null_spread_mivae_pairs_sim", 0, "mivae_sim", "mivae"),
                ("null_spread_mivae_sim", 1, "mivae_sim_seed1", "mivae"),
                ("null_spread_mivae_pairs_sim", 1, "mivae_sim_seed1", "mivae"),
                ("null_spread_direct_encoding_v4_190929", 0, "v4_alone_190929",
                 "direct_encoding"),
                ("null_spread_mivae_neurons_v4", 0, "mivae_v4", "mivae")]


@pytest.mark.parametrize("spread_name, seed, name, method", SPREAD_SEEDS,
                         ids=lambda v: str(v))
def test_null_spread_seeds_are_the_runs_own_null_controls(spread_name, seed, name, method):
  """A seed of a spread is the null control that a run with the same config and seed made
  (e.g. seed 0 of direct encoding's is the demo's), trained again: the same verdict at
  every N and the same top-1 to within 0.002 (measured up to 0.0008: the trainings ran in
  different processes, beside different jobs). The spread places that run's excursions."""
  spread = _result_file(spread_name)
  for control, checks in spread["checks"].items():
    own = _result_file(name)["results"][method][control]["chance_check"]
    for task in ("decoding", "encoding"):
      for n_way, cell in own[task].items():
        again = checks[seed][task][n_way]
        assert again["at_chance"] == cell["at_chance"], (control, task, n_way)
        assert abs(again["top1"] - cell["top1"]) < 0.002, (control, task, n_way)


def test_readme_mivae_same_session_table_is_the_result_files():
  """miVAE's held-out V4 sessions zero-shot against trained in, as
  `benchmarks/mivae_same_session.py` prints it from the two files."""
  table = _benchmark("mivae_same_session").same_session_report(
      _result_file("mivae_v4"), _result_file("mivae_v4_no_holdout"))
  assert table in README, f"README's same-session table differs from the files:\n{table}"


def test_readme_sessions_alone_table_is_the_result_files():
  """One row pair per results/v4_alone_<session>.json, in file order, and the win counts
  beneath, as `benchmarks/real_v4.py --table results/v4_alone_*.json` prints them."""
  runs = [json.loads(p.read_text())["results"] for p in _alone_paths()]
  assert runs
  table = demo.per_subject_table(runs, methods=demo.FAMILY_TABLE_METHODS)
  assert table in README, f"README's sessions-alone table differs from the files:\n{table}"
  summary = textwrap.indent(
      demo.per_subject_summary(runs, methods=demo.FAMILY_TABLE_METHODS), "    ")
  assert summary in README, f"README's sessions-alone counts differ:\n{summary}"


# Ensembles whose whole table the README shows; every ensemble is in its ensembles table.
ENSEMBLE_TABLES_SHOWN = {f"select_ensemble_{m}_v4_{s}" for m, s in [
    ("vna", "190923"), ("direct_encoding", "190923"), ("vna", "201025"),
    ("direct_encoding", "201025"), ("gabor_lit", "201025")]}


@pytest.mark.parametrize("path", sorted((REPO / "results").glob("select_ensemble_*.json")),
                         ids=lambda p: p.stem)
def test_readme_ensemble_tables_are_the_files_and_their_first_seed_the_alone_run(path):
  """A three-seed ensemble (`jaxvna select`, one setting, seeds 0-2) of one session: its
  table is in the README where it is shown, and its first seed's model scores exactly
  what the same method scored in that session's sessions-alone file (same config,
  seed 0)."""
  results = json.loads(path.read_text())["results"]
  if path.stem in ENSEMBLE_TABLES_SHOWN:
    table = demo.results_table(results)
    assert _indented(table) in README, f"README's table of {path.name} differs:\n{table}"
  method = next(m for m in results if not m.endswith("_ensemble"))
  session = path.stem.rsplit("_", 1)[1]
  alone = _results(f"v4_alone_{session}")[method]
  for task in ("decoding", "encoding"):
    assert results[method][task] == alone[task], (path.name, task)


def test_real_v4_table_command_prints_the_stacked_table():
  """The command the README names prints what the test above composes."""
  paths = _alone_paths()
  out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "real_v4.py"), "--table",
                        *map(str, paths)], capture_output=True, text=True, check=True).stdout
  runs = [json.loads(p.read_text())["results"] for p in paths]
  assert out == demo.per_subject_report(runs, methods=demo.FAMILY_TABLE_METHODS) + "\n"


def _ensemble_paths() -> list[pathlib.Path]:
  return sorted((REPO / "results").glob("select_ensemble_*_v4_*.json"))


def test_readme_ensembles_table_is_the_result_files():
  """The ensembles' table and its counts, as `benchmarks/real_v4.py --ensembles` prints
  them from the sessions-alone and ensemble files, are in the README."""
  out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "real_v4.py"), "--ensembles",
                        *map(str, _alone_paths() + _ensemble_paths())],
                       capture_output=True, text=True, check=True).stdout
  table, counts = out.strip().split("\n\n")
  assert table.count("\n") >= 2 + 3, "fewer than two sessions with both ensembles"
  assert table in README, f"README's ensembles table differs from the files:\n{table}"
  assert _indented(counts) in README, f"README's ensembles counts differ:\n{counts}"


def test_null_spread_refuses_a_control_the_method_lacks_in_one_line(tmp_path):
  out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "null_spread.py"),
                        "--config=" + str(REPO / "configs" / "vna_sim.py"),
                        "--controls=null_neurons", f"--workdir={tmp_path / 'w'}"],
                       capture_output=True, text=True)
  assert out.returncode != 0 and not (tmp_path / "w").exists()
  assert "method 'vna' has no null control null_neurons; it has null_control" in out.stderr
  assert "Traceback" not in out.stderr


def test_null_spread_interval_is_students_t_over_the_seeds():
  """`spread` on hand-made checks: sample sd, the t interval (4 seeds: t = 5.841), and a
  mean off chance flagged while every seed sits inside the analytic band."""
  module = _benchmark("null_spread")
  cell = lambda top1: {"top1": top1, "chance": 0.5, "band": [0.45, 0.55], "at_chance": True}
  checks = [{"decoding": {"2": cell(v)}, "encoding": {"2": cell(0.5)}}
            for v in (0.52, 0.53, 0.52, 0.53)]
  out = module.spread(checks)["decoding"]["2"]
  sd = float(np.std([0.52, 0.53, 0.52, 0.53], ddof=1))
  assert out["sd"] == pytest.approx(sd)
  assert out["analytic_sd"] == pytest.approx(0.05 / discriminative.CHANCE_Z)
  assert out["mean_band"] == pytest.approx([0.5 - 5.841 * sd / 2, 0.5 + 5.841 * sd / 2],
                                           abs=1e-4)
  assert not out["mean_at_chance"] and out["outside_band"] == 0
  assert module.spread(checks)["encoding"]["2"]["mean_at_chance"]   # sd 0: exactly chance
