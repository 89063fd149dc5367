"""Tests of jaxvna.models.backbones.resnet against torchvision: every stage of ResNet-18 and
ResNet-50 (BatchNorm with non-trivial statistics), the Backbone protocol, loading from .pth
and .npz files, the errors, and the preprocessing against torchvision's resize."""

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch  # torch and torchvision are test dependencies (setup.py's "test" extra)
import torchvision
from torchvision.transforms import functional as TF

from jaxvna.data.dataset import DataError
from jaxvna.errors import ConfigError, UserError
from jaxvna.models.backbones import Backbone, resnet

MEAN = np.asarray(resnet.IMAGENET_MEAN, np.float32)
STD = np.asarray(resnet.IMAGENET_STD, np.float32)
# Our stage name -> the torchvision module whose output it is (the top-level relu is the
# stem's: blocks have relus of their own).
TORCH_MODULES = {"stem": "relu", "pool1": "maxpool", "layer1": "layer1", "layer2": "layer2",
                 "layer3": "layer3", "layer4": "layer4", "avgpool": "avgpool", "logits": "fc"}
SIZE = 64  # small images keep the test fast; layer4 is then 2 x 2


@functools.partial(jax.jit, static_argnums=0)
def _apply(module, variables, x):
  """One compilation per (module, input shape) for the whole file."""
  return module.apply(variables, x, train=False)


def _randomise_batch_norm(model, x, seed):
  """BatchNorm with weights, biases and running statistics far from 1, 0, 0, 1.

  Purely random running statistics would let ResNet-50's activations grow to ~100 by
  layer4 (rms 20), unlike a trained network's; so the statistics are the batch's own
  (one train-mode pass, cumulative average), then perturbed, and the last BatchNorm of each
  residual branch gets a small scale, as in trained ResNets. Activations stay O(1-10).
  """
  g = torch.Generator().manual_seed(seed)
  model.train()
  for m in model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      m.momentum = None  # cumulative average: after one pass, the batch's statistics
      m.reset_running_stats()
  with torch.no_grad():
    model(x)
  last = {id(b.bn2) for b in model.modules() if isinstance(b, torchvision.models.resnet.BasicBlock)}
  last |= {id(b.bn3) for b in model.modules()
           if isinstance(b, torchvision.models.resnet.Bottleneck)}
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        n = m.num_features
        lo, hi = (0.1, 0.5) if id(m) in last else (0.5, 1.5)
        m.weight.copy_(lo + (hi - lo) * torch.rand(n, generator=g))
        m.bias.copy_(0.2 * torch.randn(n, generator=g))
        m.running_mean.add_(0.1 * m.running_var.sqrt() * torch.randn(n, generator=g))
        m.running_var.mul_(0.8 + 0.45 * torch.rand(n, generator=g))
  model.eval()


@functools.cache
def _reference(depth):
  """(torchvision model in eval mode, images (2, SIZE, SIZE, 3) in [0, 1], their
  ImageNet-normalised NHWC input, {stage: torchvision's output, NHWC})."""
  torch.manual_seed(depth)
  model = getattr(torchvision.models, f"resnet{depth}")(weights=None)
  images = np.random.default_rng(depth).random((2, SIZE, SIZE, 3), dtype=np.float32)
  x = (images - MEAN) / STD
  x_nchw = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  _randomise_batch_norm(model, x_nchw, seed=depth + 1)
  captured = {}
  for stage, name in TORCH_MODULES.items():
    getattr(model, name).register_forward_hook(
        lambda m, i, out, stage=stage: captured.__setitem__(stage, out.detach().clone()))
  with torch.no_grad():
    model(x_nchw)
  # avgpool's output is (B, C, 1, 1), flattened by torchvision's forward before fc.
  out = {s: (t.numpy().reshape(2, -1) if s in ("avgpool", "logits")
             else t.numpy().transpose(0, 2, 3, 1)) for s, t in captured.items()}
  return model, images, x, out


def _state_dict(depth):
  return _reference(depth)[0].state_dict()


def _numpy_state_dict(depth):
  return {k: v.numpy() for k, v in _state_dict(depth).items()}


# ----------------------------------------------------------------------------- the network

@pytest.mark.parametrize("depth", [18, 50])
def test_every_stage_matches_torchvision(depth):
  _, _, x, expected = _reference(depth)
  backbone = resnet.from_state_dict(_state_dict(depth), depth)
  assert isinstance(backbone, Backbone) and backbone.name == f"resnet{depth}"
  assert backbone.stages == ("stem", "pool1", "layer1", "layer2", "layer3", "layer4",
                             "avgpool", "logits")
  out = _apply(backbone.module, backbone.variables, x)
  c = 512 * (4 if depth == 50 else 1)
  assert out["layer4"].shape == (2, SIZE // 32, SIZE // 32, c)
  assert out["avgpool"].shape == (2, c) and out["logits"].shape == (2, 1000)
  for stage in backbone.stages:
    # Largest |difference| measured: 7e-6 (layer4 of ResNet-50), values up to ~9.
    np.testing.assert_allclose(np.asarray(out[stage]), expected[stage], rtol=0, atol=1e-4,
                               err_msg=stage)


def test_backbone_call_preprocesses_and_selects_stages():
  """bb(images in [0, 1]) applies the module to bb.preprocess(images): the ImageNet-
  normalised images that torchvision saw in the stage test (whose values are checked there;
  shapes only here, as compiling one more ResNet would double this test's time)."""
  _, images, x, _ = _reference(18)
  backbone = resnet.from_state_dict(_state_dict(18), 18, image_size=SIZE)
  np.testing.assert_allclose(np.asarray(backbone.preprocess(images)), x, rtol=0, atol=1e-6)
  out = jax.eval_shape(lambda im: backbone(im, stages=("pool1", "logits")), images)
  assert {s: v.shape for s, v in out.items()} == {"pool1": (2, SIZE // 4, SIZE // 4, 64),
                                                  "logits": (2, 1000)}
  out = jax.eval_shape(backbone, images)
  assert sorted(out) == sorted(backbone.stages)  # (eval_shape sorts dict keys)


def test_without_head():
  backbone = resnet.from_state_dict(_state_dict(18), 18, num_classes=0)  # fc.* ignored
  assert backbone.stages[-1] == "avgpool" and "fc" not in backbone.variables["params"]
  out = jax.eval_shape(backbone.module.apply, backbone.variables,
                       jnp.zeros((1, SIZE, SIZE, 3)))
  assert "logits" not in out and out["avgpool"].shape == (1, 512)


def test_other_head_size():
  sd = _numpy_state_dict(18)
  sd["fc.weight"], sd["fc.bias"] = sd["fc.weight"][:10], sd["fc.bias"][:10]
  with pytest.raises(DataError, match=r"'fc.(weight|bias)' has shape \(10(, 512)?,?\), "
                     r"expected \(1000(, 512)?,?\).*pass num_classes"):
    resnet.from_state_dict(sd, 18)
  backbone = resnet.from_state_dict(sd, 18, num_classes=10)
  assert backbone.variables["params"]["fc"]["kernel"].shape == (512, 10)


# ----------------------------------------------------------------------------- files

def _assert_same_variables(a, b):
  jax.tree.map(lambda u, v: np.testing.assert_array_equal(np.asarray(u), np.asarray(v)),
               a.variables, b.variables)


def test_load_pth_and_npz(tmp_path):
  direct = resnet.from_state_dict(_state_dict(18), 18)
  torch.save(_state_dict(18), tmp_path / "resnet18.pth")
  from_pth = resnet.load(tmp_path / "resnet18.pth", 18)
  np.savez(tmp_path / "resnet18.npz", **_numpy_state_dict(18))
  from_npz = resnet.load(str(tmp_path / "resnet18.npz"), 18)
  _assert_same_variables(from_pth, direct)
  _assert_same_variables(from_npz, direct)
  _, _, x, expected = _reference(18)
  for backbone in (from_pth, from_npz):  # the same compiled program as the stage test
    out = _apply(backbone.module, backbone.variables, x)
    np.testing.assert_allclose(np.asarray(out["logits"]), expected["logits"], rtol=0,
                               atol=1e-4)


def test_file_errors(tmp_path, monkeypatch):
  missing = tmp_path / "nowhere" / "resnet50.pth"
  with pytest.raises(DataError, match=f"{missing}: file is missing"):
    resnet.load(missing, 50)
  with pytest.raises(DataError, match="is a folder"):
    resnet.load(tmp_path, 50)
  (tmp_path / "weights.bin").write_bytes(b"0")
  with pytest.raises(DataError, match=r"weights.bin: unknown file kind '.bin'"):
    resnet.load(tmp_path / "weights.bin", 50)
  (tmp_path / "broken.pth").write_bytes(b"not a torch file")
  with pytest.raises(DataError, match="broken.pth: cannot read as a torch state_dict"):
    resnet.load(tmp_path / "broken.pth", 18)
  torch.save([1, 2], tmp_path / "list.pth")
  with pytest.raises(DataError, match="list.pth: holds a list, expected a state_dict"):
    resnet.load(tmp_path / "list.pth", 18)
  sd = _numpy_state_dict(18)
  del sd["layer2.0.downsample.1.running_var"]
  np.savez(tmp_path / "partial.npz", **sd)
  with pytest.raises(DataError, match=r"partial.npz: .*missing key "
                     r"'layer2.0.downsample.1.running_var' \(expected shape \(128,\)\)"):
    resnet.load(tmp_path / "partial.npz", 18)
  torch.save(_state_dict(18), tmp_path / "resnet18.pt")
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
  with pytest.raises(UserError, match="needs torch, which is not installed"):
    resnet.load(tmp_path / "resnet18.pt", 18)


# ----------------------------------------------------------------------------- errors

def test_state_dict_errors():
  sd = _numpy_state_dict(50)
  del sd["layer3.4.bn2.running_mean"]
  with pytest.raises(DataError, match=r"state_dict of resnet50: missing key "
                     r"'layer3.4.bn2.running_mean' \(expected shape \(256,\)\)") as info:
    resnet.from_state_dict(sd, 50)
  assert isinstance(info.value, UserError)

  sd = _numpy_state_dict(18)
  sd["layer1.0.conv1.weight"] = sd["layer1.0.conv1.weight"][:, :, :2]
  with pytest.raises(DataError, match=r"'layer1.0.conv1.weight' has shape \(64, 64, 2, 3\), "
                     r"expected \(64, 64, 3, 3\)"):
    resnet.from_state_dict(sd, 18)

  # ResNet-50's names include all of ResNet-18's: the extra ones give it away.
  with pytest.raises(DataError, match=r"unexpected key 'layer1.0.conv3.weight'.*another "
                     "network or depth"):
    resnet.from_state_dict(_state_dict(50), 18)


def test_unsupported_configs():
  for call in (lambda: resnet.from_state_dict(_state_dict(18), 34),
               lambda: resnet.build(34)):
    with pytest.raises(ConfigError, match=r"depth: 34 is not supported; expected one of "
                       r"\[18, 50\]") as info:
      call()
    assert isinstance(info.value, ValueError)
  with pytest.raises(ConfigError, match="ResNet.block: unknown 'plain'"):
    jax.eval_shape(resnet.ResNet((2, 2, 2, 2), "plain").init, jax.random.key(0),
                   jnp.zeros((1, 32, 32, 3)))


# ----------------------------------------------------------------------------- preprocessing

def test_preprocess_grey_and_normalisation():
  grey = np.random.default_rng(0).random((2, 8, 8, 1), dtype=np.float32)
  out = np.asarray(resnet.preprocess(grey, image_size=8))
  assert out.shape == (2, 8, 8, 3)
  np.testing.assert_allclose(out, (np.repeat(grey, 3, axis=-1) - MEAN) / STD, atol=1e-6)
  half = np.asarray(resnet.preprocess(np.full((1, 4, 4, 3), 0.5, np.float32), image_size=4))
  np.testing.assert_allclose(half[0, 0, 0], [(0.5 - 0.485) / 0.229, (0.5 - 0.456) / 0.224,
                                             (0.5 - 0.406) / 0.225], atol=1e-6)
  as_uint8 = np.asarray(resnet.preprocess(np.full((1, 4, 4, 3), 255, np.uint8), image_size=4))
  np.testing.assert_allclose(as_uint8[0, 0, 0], (1 - MEAN) / STD, atol=1e-6)
  with pytest.raises(DataError, match=r"C = 1 or 3, got shape \(2, 8, 8, 2\)"):
    resnet.preprocess(np.zeros((2, 8, 8, 2), np.float32))
  backbone = resnet.from_state_dict(_state_dict(18), 18)
  assert backbone.preprocess(grey).shape == (2, 224, 224, 3)


@pytest.mark.parametrize("side, atol", [
    (32, 1e-5),  # upsampling: measured 9e-7
    (300, 3e-5),  # downsampling: measured 1.5e-5, float32 rounding of the filter weights
])                # (both libraries are ~1e-5 from a float64 resize)
def test_resize_matches_torchvision(side, atol):
  images = np.random.default_rng(side).random((2, side, side, 3), dtype=np.float32)
  ours = np.asarray(resnet.preprocess(images, image_size=224)) * STD + MEAN  # undo the norm
  theirs = TF.resize(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), [224, 224],
                     interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
  np.testing.assert_allclose(ours, theirs.numpy().transpose(0, 2, 3, 1), rtol=0, atol=atol)
