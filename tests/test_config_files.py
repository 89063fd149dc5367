"""Config plumbing: the shipped configs are found, and siblings load by path."""

import pytest

from jaxvna import config_files


def test_configs_dir_holds_the_shipped_configs():
  names = {p.name for p in config_files.configs_dir().glob("*.py")}
  assert {"vna_sim.py", "vna_cowley_v4.py", "bench_dina_mlp.py"} <= names


def test_sibling_loads_a_config_beside_a_file(tmp_path):
  (tmp_path / "base.py").write_text("def get_config():\n  return {'x': 1}\n")
  (tmp_path / "child.py").write_text("")
  module = config_files.sibling(str(tmp_path / "child.py"), "base")
  assert module.get_config() == {"x": 1}
  with pytest.raises(FileNotFoundError, match="missing.py"):
    config_files.sibling(str(tmp_path / "child.py"), "missing")


def test_every_shipped_config_builds():
  for path in sorted(config_files.configs_dir().glob("*.py")):
    if path.name == "__init__.py":
      continue
    module = config_files.sibling(str(path), path.stem)
    config = module.get_config()
    assert config.method in ("vna", "direct_encoding", "direct_decoding", "mivae", "dina",
                             "group_vae")
    assert config.train.steps > 0 and config.train.batch_size > 0


def test_scaling_configs_define_a_study_of_nested_fractions():
  for name in ("scaling_sim", "scaling_cowley_v4"):
    config = config_files.sibling(str(config_files.configs_dir() / f"{name}.py"), name).get_config()
    fractions = tuple(config.scaling.fractions)
    assert len(fractions) >= 3 and fractions == tuple(sorted(fractions)) and fractions[-1] == 1.0
    assert config.scaling.bootstrap >= 200 and config.data.train_fraction == 1.0
