"""MIG-Vis end to end on a tiny simulation: stage configs, visualize.json, grids."""

import json

import pytest

from jaxvna import cli
from jaxvna.configs import migvis_sim
from jaxvna.interpret import migvis


def tiny_config():
  c = migvis_sim.get_config()
  c.data.kwargs.num_images = 200
  c.data.kwargs.neurons_per_subject = (20, 16, 12)
  c.migvis.groups = (1, 1)
  c.migvis.readin_dim, c.migvis.hidden = 16, (16,)
  c.migvis.supervision.weight = 1.0
  c.critic.channels, c.critic.embed_dim, c.critic.value_hidden = (8,), 8, (8,)
  c.diffusion.channels, c.diffusion.time_dim = (8,), 16
  for stage in ("group_vae", "critic", "diffusion"):
    c.stages[stage].steps = 3
    c.stages[stage].batch_size = 16
  c.train.progress_bar = False
  c.eval.migvis.num_images = 4
  c.eval.migvis.grid_images = 2
  c.eval.migvis.scales = (1.0, 5.0)
  c.eval.migvis.ddim_steps = 2
  c.eval.migvis.reference_size = 16
  return c


def test_stage_config_keeps_only_what_the_stage_reads():
  config = migvis_sim.get_config()
  vae = migvis.stage_config(config, "group_vae")
  assert vae.method == "group_vae" and vae.train.steps == config.stages.group_vae.steps
  assert "critic" not in vae and "diffusion" not in vae and "stages" not in vae
  unet = migvis.stage_config(config, "diffusion")
  assert "migvis" not in unet and unet.optim.lr == config.stages.diffusion.lr
  assert "migvis" in migvis.stage_config(config, "critic")  # the critic reads the groups


def test_visualize_end_to_end(tmp_path):
  config = tiny_config()
  out = migvis.visualize(config, tmp_path)
  saved = json.loads((tmp_path / "visualize.json").read_text())
  assert saved["target_shift"] == pytest.approx(out["target_shift"])
  for key in ("target_shift", "offtarget_shift", "unguided_shift", "critic", "per_scale",
              "critic_mi_bound", "disentanglement", "true_factor_shift", "target_met"):
    assert key in saved
  assert [s["scale"] for s in saved["per_scale"]] == [1.0, 5.0]
  assert len(saved["true_factor_shift"]) == 2 and len(saved["true_factor_shift"][0]) == 4
  assert saved["figures"] == ["migvis_group0.png", "migvis_group1.png"]
  assert all((tmp_path / f).stat().st_size > 0 for f in saved["figures"])
  for stage in ("group_vae", "critic", "diffusion"):
    assert json.loads((tmp_path / stage / "summary.json").read_text())["steps"] == 3


def test_visualize_is_a_command():
  assert "visualize" in cli.COMMANDS and "visualize" in cli.__doc__
  config = tiny_config()
  config.eval.migvis.readout = "eeg"
  with pytest.raises(ValueError, match="unknown 'eeg'"):
    migvis.response_model(config, None, None, None, False)
