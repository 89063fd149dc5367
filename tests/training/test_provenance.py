"""Provenance of result files: the command as typed, machine paths written portably, the
versions, devices and data fingerprint."""

import pathlib

from jaxvna.configs import vna_sim
from jaxvna.data import simulator
from jaxvna.data import dataset as dataset_lib
from jaxvna.training import provenance


def test_command_line_is_what_a_user_types_again(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "benchmarks").mkdir()
  script = tmp_path / "benchmarks" / "run.py"
  assert provenance.command_line([str(script), "--workdir=W x"]) == (
      "python benchmarks/run.py '--workdir=W x'")
  assert provenance.command_line(["/somewhere/bin/jaxvna", "demo", "--config=c.py"]) == (
      "jaxvna demo --config=c.py")
  assert provenance.command_line(["/elsewhere/tool.py", "-v"]) == "python tool.py -v"
  cli = pathlib.Path(provenance.__file__).parents[1] / "cli.py"  # python -m jaxvna.cli
  assert provenance.command_line([str(cli), "train", "--workdir=W"]) == "jaxvna train --workdir=W"


def test_config_overrides_are_the_config_flags_of_a_command_in_order():
  command = ("jaxvna visualize --config=configs/migvis_sim.py --workdir=W "
             "--config.eval.migvis.split=validation '--config.eval.migvis.scales=(300.0,)' "
             "--config.seed=1 --force")
  assert provenance.config_overrides(command) == (
      "--config.eval.migvis.split=validation '--config.eval.migvis.scales=(300.0,)' "
      "--config.seed=1")
  assert provenance.config_overrides(command, drop=("eval.migvis.split", "seed")) == (
      "'--config.eval.migvis.scales=(300.0,)'")
  assert provenance.config_overrides("jaxvna train --config=c.py --workdir=W") == ""


def test_portable_names_the_data_folder_working_folder_and_home(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("JAXVNA_DATA_DIR", "/data/shared/")
  text = f"/data/shared/cowley {tmp_path}/results {pathlib.Path.home()}/x"
  assert provenance.portable(text) == "$JAXVNA_DATA_DIR/cowley ./results ~/x"


def test_record_describes_the_run(monkeypatch):
  monkeypatch.setenv("JAXVNA_DATA_DIR", "/data/shared")
  config = vna_sim.get_config("tiny")
  config.data.prepared_dir = "/data/shared/prepared"
  dataset = simulator.simulate(**config.data.kwargs)
  rec = provenance.record(config, dataset, started=0.0, command="jaxvna demo")
  assert rec["command"] == "jaxvna demo"
  assert rec["config"]["data"]["prepared_dir"] == "$JAXVNA_DATA_DIR/prepared"
  assert rec["config"]["train"]["steps"] == config.train.steps
  assert rec["data"] == {"name": dataset.name, "recordings": ["subject0", "subject1"],
                         "fingerprint": dataset_lib.fingerprint(dataset)}
  assert rec["devices"]["platform"] == "cpu" and rec["devices"]["count"] == 8
  assert all(rec["versions"][p] for p in ("python", "jax", "flax", "optax", "numpy"))
  assert rec["jaxvna"]["version"] and rec["wall_time_s"] > 0
