"""Tests of `jaxvna features` (jaxvna.commands.features): the files it writes, what it
refuses, its TFDS copy, and the path from the command line to a trained `features` tower
on the V4 recordings."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxvna.commands import features
from jaxvna.configs import vna_cowley_v4, vna_features, vna_sim
from jaxvna.data import readers, tfds_builders
from jaxvna.errors import RefusedPathError
from jaxvna.models import backbones
from jaxvna.models.backbones import extract
from jaxvna.training import train

SIM = dict(backbone="resnet18", weights=backbones.RANDOM, layer="layer2", pool="2",
           input_size=32, batch_size=48)


def _sim_config():
  config = vna_sim.get_config("tiny")
  config.data.kwargs.num_images = 120
  return config


def test_writes_each_recording_with_its_features_and_a_manifest(tmp_path):
  config = _sim_config()
  out = tmp_path / "f"
  manifest = features.run(config, out_dir=str(out), prepare_dir=str(tmp_path / "tfds"), **SIM)
  dataset = train.load_dataset(config)
  names = [r.name for r in dataset.recordings]
  assert manifest["files"] == [f"{n}.npz" for n in names]
  assert manifest["feature_dim"] == 2 * 2 * 128 and manifest["random_weights"]
  assert json.loads((out / "features.json").read_text())["layer"] == "layer2"
  written = readers.read_npz([out / f for f in manifest["files"]])
  net = backbones.load("resnet18", backbones.RANDOM, image_size=32, seed=config.seed)
  for rec, back in zip(dataset.recordings, written.recordings):
    np.testing.assert_array_equal(back.images, rec.images)
    np.testing.assert_array_equal(back.split, rec.split)
    np.testing.assert_array_equal(back.stimulus_ids, rec.stimulus_ids)
    want = extract.extract(net, rec.images[:7], stage="layer2", pool=2)
    np.testing.assert_allclose(back.image_features[:7], want, atol=2e-5, rtol=1e-4)
  prepared = tfds_builders.read_prepared(manifest["prepared_dir"])
  np.testing.assert_allclose(prepared.recordings[0].image_features,
                             written.recordings[0].image_features)
  # a second run replaces its own files
  features.run(config, out_dir=str(out), **SIM)


def test_files_it_did_not_write_are_refused_before_any_work(tmp_path):
  out = tmp_path / "f"
  out.mkdir()
  foreign = out / "subject0.npz"
  foreign.write_bytes(b"a user's file")
  with pytest.raises(RefusedPathError, match="subject0.npz"):
    features.run(_sim_config(), out_dir=str(out), **SIM)
  assert foreign.read_bytes() == b"a user's file"
  assert sorted(p.name for p in out.iterdir()) == ["subject0.npz"]


def _cli(*args, cwd):
  return subprocess.run([sys.executable, "-m", "jaxvna.cli", *args], capture_output=True,
                        text=True, timeout=600, cwd=cwd,
                        env=dict(os.environ, JAXVNA_COMPILATION_CACHE=""))


def test_missing_flags_are_one_line(tmp_path):
  out = _cli("features", "--backbone=resnet18", cwd=tmp_path)
  assert out.returncode == 2
  assert out.stderr.strip() == ("jaxvna features: error: --weights, --layer, --out_dir "
                                "required (e.g. --backbone=resnet50 --weights=resnet50.pth "
                                "--layer=layer3 --out_dir=v4_resnet50_layer3)")


def test_v4_features_then_a_features_tower_from_the_command_line(real_data_dir, tmp_path):
  out = _cli("features", f"--config={vna_cowley_v4.__file__}:tiny",
             f"--config.data.root={real_data_dir / 'cowley_v4'}", "--backbone=resnet18",
             "--weights=random", "--layer=layer3", "--pool=mean", "--input_size=32",
             "--out_dir=v4_features", cwd=tmp_path)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "wrote 2 recordings with 256 features per image" in out.stdout
  assert "--config=configs/vna_features.py:v4_features" in out.stdout
  out = _cli("train", f"--config={vna_features.__file__}:v4_features,tiny",
             "--workdir=w", "--config.train.steps=20", cwd=tmp_path)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads((tmp_path / "w" / "results.json").read_text())
  assert result["provenance"]["data"]["recordings"] == ["210305", "210325"]
  assert result["provenance"]["config"]["model"]["image_tower"]["type"] == "features"
  for task in ("decoding", "encoding"):
    assert 0 <= result["results"]["vna"][task]["10"]["top1"] <= 1
