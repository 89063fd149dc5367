"""The `jaxvna` command line: dispatch, the data summary, clear errors."""

import json
import os
import subprocess
import sys

from jaxvna import cli
from jaxvna.configs import vna_cowley_v4, vna_sim


def _run(*args, timeout=300, env=None):
  return subprocess.run([sys.executable, "-m", "jaxvna.cli", *args], capture_output=True,
                        text=True, timeout=timeout,
                        env=None if env is None else dict(os.environ, **env))


def test_usage_and_unknown_command(capsys):
  assert cli.run(["jaxvna", "--help"]) == 0
  usage = capsys.readouterr().out
  assert "demo" in usage and "interpret" in usage and "scaling" in usage
  assert cli.run(["jaxvna", "fly"]) == 2
  assert "unknown command 'fly'" in capsys.readouterr().err


def test_interpret_refuses_a_config_that_is_not_dina(tmp_path):
  out = _run("interpret", "--config=" + vna_sim.__file__, f"--workdir={tmp_path}")
  assert out.returncode != 0
  assert "jaxvna interpret explains DINA models; config.method is 'vna'" in out.stderr


def test_scaling_refuses_too_few_fractions(tmp_path):
  out = _run("scaling", "--config.scaling.fractions=(0.5,1.0)", f"--workdir={tmp_path}")
  assert out.returncode != 0
  assert "scaling.fractions: need at least 3 distinct fractions" in out.stderr


def test_data_prints_the_summary_of_a_configured_dataset():
  out = _run("data", "--config=" + vna_sim.__file__, "--config.data.kwargs.num_images=200",
             "--config.data.kwargs.image_size=32",
             "--config.data.kwargs.spatial_frequency_range=(2.0,8.0)")
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.splitlines()
  assert lines[0].startswith("dataset simulated: 3 recordings, images 32x32x1")
  assert [l.split()[:2] for l in lines[2:]] == [["subject0", "300"], ["subject1", "250"],
                                                ["subject2", "200"]]


def test_data_selects_v4_sessions(real_data_dir):
  out = _run("data", "--config=" + vna_cowley_v4.__file__,
             f"--config.data.root={real_data_dir / 'cowley_v4'}",
             "--config.data.sessions=('210325','190923')")
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.splitlines()
  assert lines[0].startswith("dataset cowley_v4: 2 recordings, images 64x64x1")
  assert [l.split()[:3] for l in lines[2:]] == [["210325", "50", "640"], ["190923", "33", "1200"]]


def test_data_names_the_missing_folder(tmp_path):
  out = _run("data", "--config=" + vna_cowley_v4.__file__,
             f"--config.data.root={tmp_path / 'nowhere'}")
  assert out.returncode == 2
  # A user's mistake is one line, without a traceback (--verbose shows it).
  assert out.stderr.strip().splitlines() == [line for line in out.stderr.strip().splitlines()
                                             if line.startswith("jaxvna data: error: ")]
  assert str(tmp_path / "nowhere") in out.stderr and "Traceback" not in out.stderr
  verbose = _run("data", "--config=" + vna_cowley_v4.__file__, "--verbose",
                 f"--config.data.root={tmp_path / 'nowhere'}")
  assert verbose.returncode != 0 and "Traceback" in verbose.stderr
  assert "DataError" in verbose.stderr


def test_a_config_value_that_cannot_work_is_one_line_before_anything_runs(tmp_path):
  out = _run("train", "--config=" + vna_sim.__file__, f"--workdir={tmp_path / 'run'}",
             "--config.train.checkpoint_every=0", "--config.optim.lr=-0.001")
  assert out.returncode == 2
  assert out.stderr.strip() == (
      "jaxvna train: error: config.optim.lr=-0.001: expected a finite number > 0; "
      "config.train.checkpoint_every=0: expected an integer >= 1")
  assert not (tmp_path / "run").exists()


def test_data_prepare_writes_a_tfds_copy_and_summarises_it(tmp_path):
  out = _run("data", "--config=" + vna_sim.__file__, "--config.data.kwargs.num_images=200",
             "--config.data.kwargs.image_size=32",
             "--config.data.kwargs.spatial_frequency_range=(2.0,8.0)",
             f"--prepare_dir={tmp_path}")
  assert out.returncode == 0, out.stderr[-2000:]
  assert "prepared simulator at" in out.stdout
  assert list(tmp_path.glob("jaxvna_simulator/*/*/jaxvna_metadata.json"))
  assert "subject2             200" in out.stdout


def test_a_second_run_of_a_config_reuses_the_compilation_cache(tmp_path):
  cache = tmp_path / "cache"
  env = {"JAXVNA_COMPILATION_CACHE": str(cache)}
  args = ("train", "--config=" + vna_sim.__file__ + ":tiny", "--config.train.steps=20",
          "--config.eval.n_ways=(2,)")
  first = _run(*args, f"--workdir={tmp_path / 'a'}", env=env)
  assert first.returncode == 0, first.stderr[-2000:]
  entries = sorted(p.name for p in cache.iterdir())
  assert entries  # compiled programs were stored
  second = _run(*args, f"--workdir={tmp_path / 'b'}", env=env)
  assert second.returncode == 0, second.stderr[-2000:]
  assert sorted(p.name for p in cache.iterdir()) == entries  # nothing new to compile
  summary = lambda d: json.loads((tmp_path / d / "summary.json").read_text())
  assert summary("a")["params_digest"] == summary("b")["params_digest"]
