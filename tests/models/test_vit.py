"""ViT / SigLIP backbones from big_vision .npz files, against a plain-numpy reference.

The parameter files are written here in big_vision's layout (keys "a/b/c" as
`utils.tree_flatten_with_names` makes them) with random weights for a tiny model: patch 4,
width 32, depth 2, 4 heads, MLP 64, 16 x 16 images (a 4 x 4 patch grid). The reference
forward pass below is written from big_vision's models/vit.py in float64 numpy, apart
from the module under test: patches cut one by one, softmax attention per head,
two-pass LayerNorm (eps 1e-6), GELU's tanh approximation (flax's nn.gelu default), the
MAP head. The module runs in float32; measured max |difference| over all stages and
layouts: 1.5e-6 for activations up to about 5 (tolerance 1e-4).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from jaxvna.data.dataset import DataError
from jaxvna.errors import ConfigError, UserError
from jaxvna.models.backbones import Backbone
from jaxvna.models.backbones import vit

PATCH, WIDTH, DEPTH, HEADS, MLP, GRID = 4, 32, 2, 4, 64, 4
SIZE = PATCH * GRID
TOL = 1e-4


# ----------------------------------------------------------------------------- files

def _tower(seed, *, pool="gap", cls=False, head=None, rep=None, posemb=True):
  """{relative key: float32 array} of a random image tower in big_vision's layout."""
  rng = np.random.default_rng(seed)
  d, hd = WIDTH, WIDTH // HEADS

  def w(*shape, fan_in):
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

  def small(*shape, scale=0.1):
    return (scale * rng.standard_normal(shape)).astype(np.float32)

  def ln(s):
    return {f"{s}/scale": (1 + small(d)), f"{s}/bias": small(d)}

  def attn(s):
    out = {}
    for q in ("query", "key", "value"):
      out[f"{s}/{q}/kernel"] = w(d, HEADS, hd, fan_in=d)
      out[f"{s}/{q}/bias"] = small(HEADS, hd)
    out[f"{s}/out/kernel"] = w(HEADS, hd, d, fan_in=d)
    out[f"{s}/out/bias"] = small(d)
    return out

  def mlp(s):
    return {f"{s}/Dense_0/kernel": w(d, MLP, fan_in=d), f"{s}/Dense_0/bias": small(MLP),
            f"{s}/Dense_1/kernel": w(MLP, d, fan_in=MLP), f"{s}/Dense_1/bias": small(d)}

  t = {"embedding/kernel": w(PATCH, PATCH, 3, d, fan_in=PATCH * PATCH * 3),
       "embedding/bias": small(d)}
  if posemb:
    t["pos_embedding"] = small(1, GRID * GRID, d, scale=0.5)
  if cls:
    t["cls"] = small(1, 1, d, scale=0.5)
  for i in range(DEPTH):
    s = f"Transformer/encoderblock_{i}"
    t.update({**ln(f"{s}/LayerNorm_0"), **attn(f"{s}/MultiHeadDotProductAttention_0"),
              **ln(f"{s}/LayerNorm_1"), **mlp(f"{s}/MlpBlock_0")})
  t.update(ln("Transformer/encoder_norm"))
  if pool == "map":
    t.update({"MAPHead_0/probe": small(1, 1, d, scale=0.5),
              **attn("MAPHead_0/MultiHeadDotProductAttention_0"),
              **ln("MAPHead_0/LayerNorm_0"), **mlp("MAPHead_0/MlpBlock_0")})
  if rep:
    t.update({"pre_logits/kernel": w(d, rep, fan_in=d), "pre_logits/bias": small(rep)})
  if head:
    t.update({"head/kernel": w(rep or d, head, fan_in=rep or d), "head/bias": small(head)})
  return t


def _scan(tower):
  """The same weights in the scan-stacked layout (big_vision's `pyloop_to_scan`)."""
  out = {k: v for k, v in tower.items() if not k.startswith("Transformer/encoderblock_")}
  rests = {k.split("/", 2)[2] for k in tower if k.startswith("Transformer/encoderblock_0/")}
  for rest in rests:
    out[f"Transformer/encoderblock/{rest}"] = np.stack(
        [tower[f"Transformer/encoderblock_{i}/{rest}"] for i in range(DEPTH)])
  return out


def _save(tmp_path, name, tower, prefix="", extra=None):
  path = tmp_path / name
  np.savez(path, **{prefix + k: v for k, v in tower.items()}, **(extra or {}))
  return path


def _siglip_extra(seed=9):
  """Text tower and temperature / bias keys of a two-tower file (to be ignored)."""
  rng = np.random.default_rng(seed)
  return {"params/txt/Embed_0/embedding": rng.standard_normal((10, 8)).astype(np.float32),
          "params/txt/head/kernel": rng.standard_normal((8, 8)).astype(np.float32),
          "params/t": np.ones(1, np.float32), "params/b": -np.ones(1, np.float32)}


# ----------------------------------------------------------------------------- reference

def _ln(x, p, s):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-6) * p[f"{s}/scale"] + p[f"{s}/bias"]


def _gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _mlp(x, p, s):
  h = _gelu_tanh(x @ p[f"{s}/Dense_0/kernel"] + p[f"{s}/Dense_0/bias"])
  return h @ p[f"{s}/Dense_1/kernel"] + p[f"{s}/Dense_1/bias"]


def _attention(xq, xkv, p, s):
  """Multi-head attention, head by head: softmax(q k^T / sqrt(d_head)) v, then out."""
  b, lq, d = xq.shape
  out = np.zeros((b, lq, d))
  for h in range(HEADS):
    q = xq @ p[f"{s}/query/kernel"][:, h] + p[f"{s}/query/bias"][h]
    k = xkv @ p[f"{s}/key/kernel"][:, h] + p[f"{s}/key/bias"][h]
    v = xkv @ p[f"{s}/value/kernel"][:, h] + p[f"{s}/value/bias"][h]
    logits = q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1])
    e = np.exp(logits - logits.max(-1, keepdims=True))
    out += (e / e.sum(-1, keepdims=True)) @ v @ p[f"{s}/out/kernel"][h]
  return out + p[f"{s}/out/bias"]


def _sincos(h, w, d):
  y, x = np.mgrid[:h, :w]
  omega = 1. / 10_000 ** (np.arange(d // 4) / (d // 4 - 1))
  x, y = np.outer(x.ravel(), omega), np.outer(y.ravel(), omega)
  return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], 1)[None]


def _reference(tower, x, pool):
  """{stage: float64 array} of big_vision's ViT on the preprocessed input x (B, H, W, 3);
  token stages (B, N, D) without the [cls] token."""
  p = {k: v.astype(np.float64) for k, v in tower.items()}
  x = x.astype(np.float64)
  b = x.shape[0]
  tokens = []
  for i in range(GRID):
    for j in range(GRID):
      patch = x[:, i * PATCH:(i + 1) * PATCH, j * PATCH:(j + 1) * PATCH]
      tokens.append(np.einsum("bijc,ijcd->bd", patch, p["embedding/kernel"]))
  z = np.stack(tokens, 1) + p["embedding/bias"]
  z = z + (p["pos_embedding"] if "pos_embedding" in p else _sincos(GRID, GRID, WIDTH))
  out = {"patches": z}
  extra = 0
  if "cls" in p:
    z = np.concatenate([np.repeat(p["cls"], b, 0), z], 1)
    extra = 1
  for i in range(DEPTH):
    s = f"Transformer/encoderblock_{i}"
    y = _ln(z, p, f"{s}/LayerNorm_0")
    z = z + _attention(y, y, p, f"{s}/MultiHeadDotProductAttention_0")
    z = z + _mlp(_ln(z, p, f"{s}/LayerNorm_1"), p, f"{s}/MlpBlock_0")
    out[f"block{i}"] = z[:, extra:]
  enc = _ln(z, p, "Transformer/encoder_norm")
  out["encoded"] = enc[:, extra:]
  if pool == "map":
    probe = np.repeat(p["MAPHead_0/probe"], b, 0)
    a = _attention(probe, enc, p, "MAPHead_0/MultiHeadDotProductAttention_0")
    pooled = (a + _mlp(_ln(a, p, "MAPHead_0/LayerNorm_0"), p, "MAPHead_0/MlpBlock_0"))[:, 0]
  elif pool == "gap":
    pooled = enc.mean(1)
  else:
    pooled = enc[:, 0]
  out["pooled"] = y = pooled
  if "pre_logits/kernel" in p:
    y = out["pre_logits"] = np.tanh(y @ p["pre_logits/kernel"] + p["pre_logits/bias"])
  if "head/kernel" in p:
    out["logits"] = y @ p["head/kernel"] + p["head/bias"]
  return out


def _inputs(seed=0, b=2):
  return np.random.default_rng(seed).uniform(-1, 1, (b, SIZE, SIZE, 3)).astype(np.float32)


def _apply(backbone, x):
  out = backbone.module.apply(backbone.variables, x, train=False)
  return {k: np.asarray(v) for k, v in out.items()}


def _max_diff(out, ref):
  """Max |module - reference| over the stages; token maps (B, h, w, D) flattened."""
  assert set(out) == set(ref), (sorted(out), sorted(ref))
  diff = 0.0
  for k, r in ref.items():
    o = out[k].reshape(r.shape)
    diff = max(diff, float(np.max(np.abs(o - r))))
  return diff


# ----------------------------------------------------------------------------- tests

def test_siglip_map_two_tower_file_matches_reference(tmp_path):
  tower = _tower(1, pool="map", head=8)
  path = _save(tmp_path, "siglip.npz", tower, "params/img/", _siglip_extra())
  bb = vit.load(path)
  assert isinstance(bb, Backbone) and bb.name == "siglip"
  assert bb.stages == ("patches", "block0", "block1", "encoded", "pooled", "logits")
  m = bb.module
  assert (m.patch_size, m.width, m.depth, m.num_heads, m.mlp_dim, m.pool_type,
          m.num_classes, m.cls_token) == ((4, 4), 32, 2, 4, 64, "map", 8, False)
  x = _inputs()
  out = _apply(bb, x)
  assert out["patches"].shape == (2, GRID, GRID, WIDTH)  # token maps, as the protocol
  assert out["pooled"].shape == (2, WIDTH) and out["logits"].shape == (2, 8)
  assert _max_diff(out, _reference(tower, x, "map")) < TOL

  class Recorded(dict):  # only the image tower's arrays are read from the file
    read = set()

    def __getitem__(self, key):
      self.read.add(key)
      return super().__getitem__(key)

  flat = Recorded(vit.read_npz(path))
  vit.from_params(flat)
  assert flat.read == {"params/img/" + k for k in tower}


@pytest.mark.parametrize("pool", ["gap", "tok"])
def test_plain_vit_per_block_and_scan_layouts(tmp_path, pool):
  tower = _tower(2, pool=pool, cls=pool == "tok", head=5, rep=16 if pool == "tok" else None)
  x = _inputs(1)
  ref = _reference(tower, x, pool)
  per_block = vit.load(_save(tmp_path, "plain.npz", tower))  # released ViTs: no prefix
  scanned = vit.load(_save(tmp_path, "scan.npz", _scan(tower), "params/"))
  assert per_block.name == scanned.name == "vit"
  assert per_block.module == scanned.module and per_block.module.pool_type == pool
  a, b = _apply(per_block, x), _apply(scanned, x)
  assert _max_diff(a, ref) < TOL
  for k in a:  # the same weights give the same numbers, bit for bit
    np.testing.assert_array_equal(a[k], b[k])


def test_old_vision_transformer_layout(tmp_path):
  """Pre-Linen numbering, posemb under Transformer/posembed_input with the [cls] row
  first (as the vision_transformer repository's files), loads to the same model."""
  tower = _tower(3, pool="tok", cls=True)
  cls_pos = np.random.default_rng(4).standard_normal((1, 1, WIDTH)).astype(np.float32)
  old = {}
  for k, v in tower.items():
    k = (k.replace("MultiHeadDotProductAttention_0", "MultiHeadDotProductAttention_1")
         .replace("LayerNorm_1/", "LayerNorm_2/").replace("MlpBlock_0", "MlpBlock_3"))
    old[k] = v
  old["Transformer/posembed_input/pos_embedding"] = np.concatenate(
      [cls_pos, old.pop("pos_embedding")], 1)
  old["cls"] = tower["cls"] - cls_pos  # the loader adds the [cls] row back to cls
  bb = vit.load(_save(tmp_path, "old.npz", old))
  x = _inputs(2)
  assert _max_diff(_apply(bb, x), _reference(tower, x, "tok")) < TOL


def test_sincos2d_posemb_needs_grid(tmp_path):
  tower = _tower(5, posemb=False)
  path = _save(tmp_path, "sincos.npz", tower)
  with pytest.raises(DataError, match="'pos_embedding'.*sincos2d"):
    vit.load(path)
  bb = vit.load(path, posemb="sincos2d", grid=(GRID, GRID))
  x = _inputs(3)
  assert _max_diff(_apply(bb, x), _reference(tower, x, "gap")) < TOL


def test_module_creates_big_vision_names_and_shapes():
  """`ViT.init` makes exactly the file's keys and shapes: the layout is the module's."""
  import jax
  from flax.traverse_util import flatten_dict

  for pool, cls, head, rep in [("map", False, 8, None), ("tok", True, 5, 16)]:
    m = vit.ViT(patch_size=(PATCH, PATCH), width=WIDTH, depth=DEPTH, mlp_dim=MLP,
                num_heads=HEADS, pool_type=pool, cls_token=cls, num_classes=head,
                rep_size=rep)
    shapes = jax.eval_shape(m.init, jax.random.key(0), np.zeros((1, SIZE, SIZE, 3)))
    made = {"/".join(k): v.shape for k, v in flatten_dict(shapes["params"]).items()}
    assert made == {k: v.shape for k, v in _tower(0, pool=pool, cls=cls, head=head,
                                                   rep=rep).items()}


def test_pool_none_drops_head_and_keeps_tokens(tmp_path):
  tower = _tower(6, pool="map", head=8)
  bb = vit.load(_save(tmp_path, "s.npz", tower, "img/"), pool_type="none")
  assert bb.stages == ("patches", "block0", "block1", "encoded")
  x = _inputs(4)
  ref = _reference(tower, x, "map")
  out = _apply(bb, x)
  assert set(out) == set(bb.stages)
  assert _max_diff(out, {k: ref[k] for k in bb.stages}) < TOL
  with pytest.raises(ConfigError, match="pool_type 'gap'"):
    vit.load(tmp_path / "s.npz", pool_type="gap")
  with pytest.raises(ConfigError, match="width=64"):
    vit.load(tmp_path / "s.npz", width=64)


# ----------------------------------------------------------------------------- errors

def test_missing_key_names_file_key_and_shape(tmp_path):
  tower = _tower(7, pool="map")
  del tower["Transformer/encoderblock_1/LayerNorm_1/scale"]
  path = _save(tmp_path, "missing.npz", tower, "params/img/")
  with pytest.raises(DataError) as e:
    vit.load(path)
  msg = str(e.value)
  assert isinstance(e.value, UserError)
  assert str(path) in msg
  assert "'params/img/Transformer/encoderblock_1/LayerNorm_1/scale'" in msg
  assert "missing" in msg and "(32,)" in msg


def test_wrong_shape_names_file_key_and_expected_shape(tmp_path):
  tower = _tower(8, pool="map")
  tower["MAPHead_0/MlpBlock_0/Dense_1/kernel"] = np.zeros((MLP, 7), np.float32)
  path = _save(tmp_path, "shape.npz", tower, "params/img/")
  with pytest.raises(DataError, match=r"'params/img/MAPHead_0/MlpBlock_0/Dense_1/kernel': "
                                      r"shape \(64, 7\); expected \(64, 32\)") as e:
    vit.load(path)
  assert str(path) in str(e.value)
  tower = _tower(8)
  tower["Transformer/encoderblock/LayerNorm_0/scale"] = np.ones((3, WIDTH), np.float32)
  with pytest.raises(DataError, match="both scan-stacked"):
    vit.load(_save(tmp_path, "mixed.npz", tower))


def test_unknown_key_and_unknown_prefix(tmp_path):
  tower = _tower(9)
  tower["Transformer/encoderblock_0/Extra_0/kernel"] = np.zeros((2, 2), np.float32)
  path = _save(tmp_path, "extra.npz", tower, "params/")
  with pytest.raises(DataError, match=r"unknown key.*'params/Transformer/encoderblock_0/"
                                      r"Extra_0/kernel'") as e:
    vit.load(path)
  assert str(path) in str(e.value)

  path = _save(tmp_path, "elsewhere.npz", _tower(9), "model/vision/")
  with pytest.raises(DataError, match="no ViT image tower found.*'params/img/embedding/"
                                      "kernel'.*model/vision/embedding/kernel") as e:
    vit.load(path)
  assert str(path) in str(e.value)
  with pytest.raises(DataError, match="prefix 'params/img/'.*missing key"):
    vit.load(path, prefix="params/img")
  assert vit.load(path, prefix="model/vision").name == "vit"  # an explicit prefix works

  bad = tmp_path / "not.npz"
  bad.write_text("not a zip")
  with pytest.raises(DataError, match="not.npz"):
    vit.load(bad)
  with pytest.raises(DataError, match="no such parameter file"):
    vit.load(tmp_path / "absent.npz")


def test_bfloat16_arrays_are_read(tmp_path):
  import ml_dtypes

  tower = _tower(10)
  as_void = {k: v.astype(ml_dtypes.bfloat16).view(np.void(2).dtype)
             for k, v in tower.items()}  # what np.savez makes of bfloat16
  flat = vit.read_npz(_save(tmp_path, "bf16.npz", as_void))
  assert flat["embedding/kernel"].dtype == ml_dtypes.bfloat16
  bb = vit.from_params(flat)
  rounded = {k: v.astype(ml_dtypes.bfloat16).astype(np.float32) for k, v in tower.items()}
  x = _inputs(5)
  assert _max_diff(_apply(bb, x), _reference(rounded, x, "gap")) < TOL


# ----------------------------------------------------------------------------- preprocessing

def test_preprocess_grey_range_and_resize(tmp_path):
  import jax

  bb = vit.load(_save(tmp_path, "p.npz", _tower(11), "params/img/"))
  pre = bb.preprocess
  assert pre.image_size == (SIZE, SIZE) and pre.value_range == (-1.0, 1.0)
  rng = np.random.default_rng(12)
  grey = rng.uniform(0, 1, (2, SIZE, SIZE, 1)).astype(np.float32)
  grey[0, 0, 0, 0], grey[0, 0, 1, 0] = 0.0, 1.0
  x = np.asarray(pre(grey))
  assert x.shape == (2, SIZE, SIZE, 3)
  np.testing.assert_allclose(x, np.repeat(2 * grey - 1, 3, -1), atol=1e-6)
  assert x[0, 0, 0, 0] == -1.0 and x[0, 0, 1, 0] == 1.0
  np.testing.assert_array_equal(pre((grey * 255).round().astype(np.uint8)).shape, x.shape)

  # Larger images are resized (linear, antialiased) to the model's 16 x 16.
  big = rng.uniform(0, 1, (2, 40, 24, 3)).astype(np.float32)
  want = jax.image.resize(big, (2, SIZE, SIZE, 3), method="linear", antialias=True)
  np.testing.assert_allclose(np.asarray(pre(big)), 2 * np.asarray(want) - 1, atol=1e-6)
  flat = np.full((1, 33, 33, 1), 0.25, np.float32)
  np.testing.assert_allclose(np.asarray(pre(flat)), -0.5, atol=1e-6)

  # The backbone: grey in == the same grey as RGB; outputs are the module on 2x - 1.
  a, b = bb(grey), bb(np.repeat(grey, 3, -1))
  ref = _apply(bb, np.repeat(2 * grey - 1, 3, -1))
  for k in bb.stages:
    np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(a[k]), ref[k], atol=1e-5)
  assert set(bb(grey, stages=("pooled",))) == {"pooled"}

  # Another normalisation, as a documented field.
  pre2 = vit.load(tmp_path / "p.npz", mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.25)).preprocess
  np.testing.assert_allclose(
      np.asarray(pre2(grey)),
      (np.repeat(grey, 3, -1) - np.array([0.5, 0.4, 0.3])) / np.array([0.2, 0.2, 0.25]),
      atol=1e-5)
  with pytest.raises(DataError, match="channels"):
    pre(np.zeros((1, SIZE, SIZE, 2), np.float32))


def test_image_size_not_a_multiple_of_the_patch(tmp_path):
  """As So400m/14 at 384 px: the VALID patchify ignores the remainder rows/columns."""
  bb = vit.load(_save(tmp_path, "r.npz", _tower(13), "params/img/"), image_size=SIZE + 3)
  assert bb.preprocess.image_size == (SIZE + 3, SIZE + 3)
  x = np.random.default_rng(14).uniform(-1, 1, (1, SIZE + 3, SIZE + 3, 3)).astype(np.float32)
  a, b = _apply(bb, x), _apply(bb, x[:, :SIZE, :SIZE])
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  with pytest.raises(ConfigError, match="patch grid"):
    vit.load(tmp_path / "r.npz", image_size=SIZE + 4)


def test_import_is_light():
  code = ("import sys, jaxvna.models.backbones.vit as v; "
          "assert 'jax' not in sys.modules and 'flax' not in sys.modules, 'heavy import'")
  subprocess.run([sys.executable, "-c", code], check=True)
