"""ViT and SigLIP image encoders from big_vision `.npz` parameter files.

`load(path)` reads a parameter file written by google-research/big_vision (or its
predecessor google-research/vision_transformer), finds the image tower in it, infers the
architecture from the array shapes and returns a `Backbone` (see the package doc): the Flax
module `ViT`, its variables, the preprocessing and the stage names.

The module mirrors big_vision's `models/vit.py` (pre-LayerNorm transformer, learned or
sincos2d position embedding added before the optional [cls] token, LayerNorm epsilon 1e-6,
tanh-approximated GELU as flax's `nn.gelu` default, MAP pooling for SigLIP) and creates
parameters under the same names, so a file's arrays are its variables unchanged:

  embedding/{kernel (p, p, 3, D), bias (D,)}      patchify, a stride-p VALID conv
  pos_embedding (1, N, D)                         learned; absent for posemb "sincos2d"
  cls (1, 1, D)                                   pool_type "tok" only
  Transformer/encoderblock_{i}/                   i = 0 .. depth-1
    LayerNorm_0/{scale, bias} (D,)
    MultiHeadDotProductAttention_0/{query,key,value}/{kernel (D, H, D/H), bias (H, D/H)}
    MultiHeadDotProductAttention_0/out/{kernel (H, D/H, D), bias (D,)}
    LayerNorm_1/{scale, bias} (D,)
    MlpBlock_0/Dense_0/{kernel (D, M), bias (M,)}, MlpBlock_0/Dense_1/{kernel (M, D), bias (D,)}
  Transformer/encoder_norm/{scale, bias} (D,)
  MAPHead_0/{probe (1, 1, D), MultiHeadDotProductAttention_0, LayerNorm_0, MlpBlock_0}
                                                  pool_type "map" (SigLIP)
  pre_logits/{kernel (D, R), bias (R,)}           optional (big_vision's rep_size), tanh
  head/{kernel (D or R, K), bias (K,)}            optional classifier / projection

Files: big_vision saves a checkpoint as one flat `np.savez` whose keys are the tree paths
joined by "/" (`utils.tree_flatten_with_names`). The image tower sits under "params/img/"
in SigLIP / LiT two-tower files, under "params/" in ViT training checkpoints, at the top
level ("") in released ViT files, and under "opt/target/" in old Flax-optimizer
checkpoints; `from_params` tries those prefixes in turn (`PREFIXES`) unless given one.
Layouts it also reads, as big_vision's `vit.load` does: the scan-stacked encoder
("Transformer/encoderblock/..." with a leading depth axis, from `scan=True`), pre-Linen
submodule numbering (`MultiHeadDotProductAttention_1`, `LayerNorm_2`, `MlpBlock_3`), the
position embedding under "Transformer/posembed_input/" or "Transformer/", a [cls]
position embedding stored as the first of N + 1 rows (folded into `cls`), an inlined MAP
head, and bfloat16 arrays (stored by numpy as 2-byte void). All become float32.

Stages (`ViT.__call__` returns all of them, in this order):
  patches    after the patch embedding plus the position embedding
  block{i}   the output of encoder block i (residual stream)
  encoded    after the final LayerNorm (encoder_norm)
  pooled     (B, D): MAP head output ("map"), mean of the tokens ("gap"), the [cls]
             token's final state ("tok"); absent for "none"
  pre_logits (B, R) with a pre_logits layer; logits (B, K) with a head
Token stages hold the h * w patch tokens (the [cls] token of "tok" is dropped from them,
as big_vision's `pre_logits_2d`), row-major over the patch grid: h = H // p_h and
w = W // p_w for an input (B, H, W, C), so `tokens.reshape(B, h, w, D)` is the (B, h, w, D)
feature map (e.g. for DINA's per-location read-out). With `token_maps=True` (what the
`Backbone` from `from_params` / `load` uses, since the protocol takes maps or vectors) the
module returns those (B, h, w, D) maps itself; with False, (B, h * w, D) tokens.

Preprocessing (`Preprocess`): images (B, H, W, C) float in [0, 1] (uint8 is divided by
255), C = 1 repeated to 3; resized to the model's image size (patch size times the grid
side sqrt(N)) with `jax.image.resize(method="linear", antialias=True)`; then mapped to
`value_range` (default [-1, 1]: big_vision's `value_range(-1, 1)`, which SigLIP and the
vision_transformer ViTs were trained with), or standardised with `mean` / `std` on the
[0, 1] scale for checkpoints trained that way (e.g. big_vision's `vgg_value_range`).
Where the training resolution is not a multiple of the patch size (SigLIP So400m/14 at
384 px: 27 x 27 patches of 14 px = 378 px) pass `image_size=384`: the patchify, like
big_vision's VALID conv, ignores the last H mod p rows and W mod p columns.

Importing this module is light (numpy only); JAX and Flax load when a module is built or
preprocessing runs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import zipfile
from typing import Any, Mapping, Sequence

import numpy as np

from jaxvna.data.dataset import DataError
from jaxvna.errors import ConfigError
from jaxvna.models.backbones import Backbone

# Where the image tower's parameters may sit in a file, tried in this order.
PREFIXES = ("params/img/", "img/", "params/", "opt/target/img/", "opt/target/", "")
POOL_TYPES = ("gap", "map", "tok", "none")
POSEMB_TYPES = ("learn", "sincos2d")
LAYER_NORM_EPSILON = 1e-6  # flax nn.LayerNorm's default, which big_vision keeps
# The architecture fields `from_params` accepts as keyword arguments (each checked against
# what the file's shapes say; pool_type may also be "none", posemb must be given for
# sincos2d files, which store no position embedding).
ARCH_FIELDS = ("patch_size", "width", "depth", "mlp_dim", "num_heads", "pool_type",
               "num_classes", "rep_size", "posemb", "channels", "grid")


# ----------------------------------------------------------------------------- module

def posemb_sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.) -> np.ndarray:
  """big_vision's fixed 2-D sin-cos position embedding (MoCo v3), (1, h * w, width) float32.

  Rows are the patch grid row-major; columns [sin(x), cos(x), sin(y), cos(y)], each
  width / 4 frequencies, x the column and y the row index.
  """
  if width % 4:
    raise ConfigError(f"posemb 'sincos2d': width must be a multiple of 4, got {width}")
  y, x = np.mgrid[:h, :w]
  omega = np.arange(width // 4) / (width // 4 - 1)
  omega = 1. / (temperature ** omega)
  y = np.einsum("m,d->md", y.flatten(), omega)
  x = np.einsum("m,d->md", x.flatten(), omega)
  pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
  return pe.astype(np.float32)[None]


def stage_names(depth: int, pool_type: str, rep_size: int | None = None,
                num_classes: int | None = None) -> tuple[str, ...]:
  """The stages `ViT` returns, first to last."""
  names = ["patches", *(f"block{i}" for i in range(depth)), "encoded"]
  if pool_type != "none":
    names.append("pooled")
    if rep_size:
      names.append("pre_logits")
    if num_classes:
      names.append("logits")
  return tuple(names)


@functools.cache
def _modules() -> dict[str, type]:
  """The Flax module classes, defined on first use so that importing stays light."""
  import flax.linen as nn
  import jax.numpy as jnp

  xavier = nn.initializers.xavier_uniform()

  class PatchEmbedding(nn.Module):
    """big_vision's `embedding` conv (kernel = stride = patch, VALID) as one matmul.

    A stride-p VALID conv is exactly a matmul of the non-overlapping patches with the
    reshaped kernel; this form avoids XLA:CPU's slow convolution (see towers.py).
    """
    width: int
    patch_size: tuple[int, int]
    precision: Any = None

    @nn.compact
    def __call__(self, x):
      """(B, H, W, C) -> (B, H // p_h, W // p_w, width); the remainder rows/cols dropped."""
      ph, pw = self.patch_size
      b, hh, ww, c = x.shape
      h, w = hh // ph, ww // pw
      if h == 0 or w == 0:
        raise ValueError(f"ViT: input {hh}x{ww} is smaller than one {ph}x{pw} patch")
      kernel = self.param("kernel", nn.initializers.lecun_normal(), (ph, pw, c, self.width))
      bias = self.param("bias", nn.initializers.zeros, (self.width,))
      x = x[:, :h * ph, :w * pw].reshape(b, h, ph, w, pw, c)
      x = x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, ph * pw * c)  # (i, j, c) order
      return jnp.matmul(x, kernel.reshape(ph * pw * c, self.width),
                        precision=self.precision) + bias

  class MlpBlock(nn.Module):
    """Dense -> GELU (tanh approximation, flax's default, as big_vision) -> Dense."""
    mlp_dim: int
    precision: Any = None

    @nn.compact
    def __call__(self, x):
      d = x.shape[-1]
      x = nn.Dense(self.mlp_dim, kernel_init=xavier, precision=self.precision)(x)
      x = nn.gelu(x, approximate=True)
      return nn.Dense(d, kernel_init=xavier, precision=self.precision)(x)

  def attention(num_heads, precision):
    return nn.MultiHeadDotProductAttention(num_heads=num_heads, kernel_init=xavier,
                                           deterministic=True, precision=precision)

  class Encoder1DBlock(nn.Module):
    """Pre-LN block: x + MHSA(LN(x)), then x + MLP(LN(x))."""
    mlp_dim: int
    num_heads: int
    precision: Any = None

    @nn.compact
    def __call__(self, x):
      y = nn.LayerNorm(epsilon=LAYER_NORM_EPSILON)(x)
      x = x + attention(self.num_heads, self.precision)(y, y)
      y = nn.LayerNorm(epsilon=LAYER_NORM_EPSILON)(x)
      return x + MlpBlock(self.mlp_dim, self.precision)(y)

  class Encoder(nn.Module):
    """The blocks and the final LayerNorm; returns ([block outputs], encoded)."""
    depth: int
    mlp_dim: int
    num_heads: int
    precision: Any = None

    @nn.compact
    def __call__(self, x):
      outs = []
      for i in range(self.depth):
        x = Encoder1DBlock(self.mlp_dim, self.num_heads, self.precision,
                           name=f"encoderblock_{i}")(x)
        outs.append(x)
      return outs, nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, name="encoder_norm")(x)

  class MAPHead(nn.Module):
    """Multihead attention pooling: a learned probe attends over the tokens, then
    probe + MLP(LN(probe)) (no residual around the attention, as big_vision)."""
    mlp_dim: int
    num_heads: int
    precision: Any = None

    @nn.compact
    def __call__(self, x):
      b, _, d = x.shape
      probe = self.param("probe", xavier, (1, 1, d))
      x = attention(self.num_heads, self.precision)(jnp.tile(probe, (b, 1, 1)), x)
      y = nn.LayerNorm(epsilon=LAYER_NORM_EPSILON)(x)
      return (x + MlpBlock(self.mlp_dim, self.precision)(y))[:, 0]

  class ViT(nn.Module):
    """big_vision's ViT image encoder, inference only, returning every stage.

    Fields:
      patch_size: (p_h, p_w).
      width: D, the token width.
      depth: number of encoder blocks.
      mlp_dim: M, the MLP hidden width (big_vision's default is 4 * D).
      num_heads: H (D must be a multiple of H).
      pool_type: "map" (SigLIP), "gap" (mean of the tokens), "tok" (the [cls] token),
        "none" (no pooled vector, no head).
      cls_token: prepend the learned [cls] token (parameter "cls"); required by "tok";
        a "tok" checkpoint run with pool_type "none" still needs it for the same tokens.
      num_classes: K, the width of the optional "head" Dense on the pooled vector.
      rep_size: R, the width of the optional "pre_logits" Dense + tanh before the head.
      posemb: "learn" (parameter "pos_embedding" (1, N, D)) or "sincos2d" (fixed).
      token_maps: return token stages as (B, h, w, D) maps instead of (B, h * w, D).
      precision: `jax.lax.Precision` of the matmuls (None: the backend's default, which
        on GPU/TPU may round float32 matmul inputs; "highest" for full float32).
    """
    patch_size: tuple[int, int] = (16, 16)
    width: int = 768
    depth: int = 12
    mlp_dim: int = 3072
    num_heads: int = 12
    pool_type: str = "gap"
    cls_token: bool = False
    num_classes: int | None = None
    rep_size: int | None = None
    posemb: str = "learn"
    token_maps: bool = False
    precision: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False) -> dict:
      """x (B, H, W, C) float, preprocessed -> {stage: activations} (see module doc).

      `train` is accepted for the Backbone protocol; the encoder has no dropout or
      batch statistics, so it changes nothing.
      """
      del train
      if self.pool_type not in POOL_TYPES:
        raise ValueError(f"ViT: unknown pool_type {self.pool_type!r}; expected one of "
                         f"{POOL_TYPES}")
      if self.pool_type == "tok" and not self.cls_token:
        raise ValueError("ViT: pool_type 'tok' needs cls_token=True")
      x = jnp.asarray(x, jnp.float32)
      x = PatchEmbedding(self.width, tuple(self.patch_size), self.precision,
                         name="embedding")(x)
      b, h, w, d = x.shape
      x = x.reshape(b, h * w, d)
      if self.posemb == "learn":
        pos = self.param("pos_embedding", nn.initializers.normal(stddev=1 / math.sqrt(d)),
                         (1, h * w, d))
      elif self.posemb == "sincos2d":
        pos = jnp.asarray(posemb_sincos_2d(h, w, d))
      else:
        raise ValueError(f"ViT: unknown posemb {self.posemb!r}; expected one of "
                         f"{POSEMB_TYPES}")
      x = x + pos  # before the [cls] token is prepended, as big_vision
      out = {"patches": x}
      n_extra = 0
      if self.cls_token:
        cls = self.param("cls", nn.initializers.zeros, (1, 1, d))
        x = jnp.concatenate([jnp.tile(cls, (b, 1, 1)), x], axis=1)
        n_extra = 1
      blocks, encoded = Encoder(self.depth, self.mlp_dim, self.num_heads, self.precision,
                                name="Transformer")(x)
      for i, y in enumerate(blocks):
        out[f"block{i}"] = y[:, n_extra:]
      out["encoded"] = encoded[:, n_extra:]

      if self.pool_type != "none":
        if self.pool_type == "map":
          pooled = MAPHead(self.mlp_dim, self.num_heads, self.precision)(encoded)
        elif self.pool_type == "gap":
          pooled = jnp.mean(encoded, axis=1)
        else:  # "tok"
          pooled = encoded[:, 0]
        out["pooled"] = y = pooled
        if self.rep_size:
          y = out["pre_logits"] = jnp.tanh(
              nn.Dense(self.rep_size, precision=self.precision, name="pre_logits")(y))
        if self.num_classes:
          out["logits"] = nn.Dense(self.num_classes, precision=self.precision,
                                   name="head")(y)
      if self.token_maps:
        out = {k: v.reshape(b, h, w, d) if v.ndim == 3 else v for k, v in out.items()}
      return out

  return {"ViT": ViT, "PatchEmbedding": PatchEmbedding, "MlpBlock": MlpBlock,
          "Encoder1DBlock": Encoder1DBlock, "Encoder": Encoder, "MAPHead": MAPHead}


def __getattr__(name):
  if name in ("ViT", "PatchEmbedding", "MlpBlock", "Encoder1DBlock", "Encoder", "MAPHead"):
    return _modules()[name]
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------- preprocessing

@dataclasses.dataclass(frozen=True)
class Preprocess:
  """Images (B, H, W, C) in [0, 1] -> the ViT's input (B, *image_size, channels).

  Fields:
    image_size: (H', W') the model was trained at.
    channels: the model's input channels (3); C = 1 input is repeated to it.
    value_range: (lo, hi) that [0, 1] maps to linearly; big_vision's `value_range(lo, hi)`
      (SigLIP and the big_vision / vision_transformer ViTs: (-1, 1)).
    mean, std: if given, (x - mean) / std per channel on the [0, 1] scale instead of
      `value_range` (for checkpoints trained with e.g. `vgg_value_range`).
  """
  image_size: tuple[int, int]
  channels: int = 3
  value_range: tuple[float, float] = (-1.0, 1.0)
  mean: tuple[float, ...] | None = None
  std: tuple[float, ...] | None = None

  def __call__(self, images):
    import jax
    import jax.numpy as jnp

    x = jnp.asarray(images)
    if x.ndim != 4:
      raise DataError(f"ViT preprocess: images must be (B, H, W, C), got shape {x.shape}")
    uint8 = x.dtype == jnp.uint8
    x = x.astype(jnp.float32)
    if uint8:
      x = x / 255.0
    b, hh, ww, c = x.shape
    if c != self.channels and c != 1:
      raise DataError(f"ViT preprocess: images have {c} channels; expected 1 (grey) or "
                      f"{self.channels}")
    if (hh, ww) != tuple(self.image_size):
      # Resize before repeating grey to RGB: the same result for a third of the work.
      x = jax.image.resize(x, (b, *self.image_size, c), method="linear", antialias=True)
    if c != self.channels:
      x = jnp.repeat(x, self.channels, axis=-1)
    if self.mean is not None or self.std is not None:
      mean = jnp.asarray(0.0 if self.mean is None else self.mean, jnp.float32)
      std = jnp.asarray(1.0 if self.std is None else self.std, jnp.float32)
      return (x - mean) / std
    lo, hi = self.value_range
    return lo + (hi - lo) * x


# ----------------------------------------------------------------------------- loading

def _open_npz(path: str) -> Any:
  """np.load of an .npz archive (lazy: arrays are read on access), or a DataError."""
  if not os.path.isfile(path):
    raise DataError(f"{path}: no such parameter file")
  try:
    loaded = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise DataError(f"{path}: not a readable .npz parameter file ({e})") from e
  if not isinstance(loaded, np.lib.npyio.NpzFile):
    raise DataError(f"{path}: holds one array (np.save), not an .npz of named parameters")
  return loaded


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """{key: array} of a whole `.npz` file (numpy only, no pickles), bfloat16 recovered.

  Raises DataError when the file is missing or not an .npz archive.
  """
  with _open_npz(os.fspath(path)) as loaded:
    return {k: _recover_dtype(loaded[k]) for k in loaded.files}


def _recover_dtype(a: np.ndarray) -> np.ndarray:
  """numpy stores bfloat16 as 2-byte void (big_vision's `recover_dtype`)."""
  if a.dtype.kind == "V" and a.dtype.itemsize == 2:
    import ml_dtypes  # a JAX dependency
    return a.view(ml_dtypes.bfloat16)
  return a


def _natural_key(s: str):
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _renumber_pre_linen(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Pre-Linen checkpoints numbered submodules across classes (LayerNorm_0,
  MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3); Linen numbers per class.
  Renumbers per class within each scope, in natural order, like flax's
  `convert_pre_linen` (a no-op on Linen names)."""
  children: dict[str, set[str]] = {}
  for key in flat:
    parts = key.split("/")
    for i in range(len(parts) - 1):  # leaves (kernel, bias, ...) are never renumbered
      children.setdefault("/".join(parts[:i]), set()).add(parts[i])
  rename: dict[tuple[str, str], str] = {}
  for scope, names in children.items():
    counts: dict[str, int] = {}
    for name in sorted(names, key=_natural_key):
      m = re.fullmatch(r"(.*)_\d+", name)
      if m:
        n = counts.get(m.group(1), 0)
        counts[m.group(1)] = n + 1
        rename[scope, name] = f"{m.group(1)}_{n}"
  out = {}
  for key, value in flat.items():
    parts = key.split("/")
    new = [rename.get(("/".join(parts[:i]), p), p) if i < len(parts) - 1 else p
           for i, p in enumerate(parts)]
    out["/".join(new)] = value
  return out


def _normalise_layout(p: dict[str, np.ndarray], where) -> dict[str, np.ndarray]:
  """Older and scan-stacked layouts -> the per-block Linen layout (see module doc)."""
  p = _renumber_pre_linen(p)
  for old in ("Transformer/posembed_input/pos_embedding", "Transformer/pos_embedding"):
    if old in p:
      if "pos_embedding" in p:
        raise DataError(f"{where(old)} and {where('pos_embedding')}: two position "
                        f"embeddings")
      p["pos_embedding"] = p.pop(old)
  if "probe" in p:  # MAP head inlined at the top level (ViT-G development checkpoints)
    for key in list(p):
      if key.split("/")[0] in ("probe", "MlpBlock_0", "MultiHeadDotProductAttention_0",
                               "LayerNorm_0"):
        p[f"MAPHead_0/{key}"] = p.pop(key)
  stacked = [k for k in p if k.startswith("Transformer/encoderblock/")]
  if stacked:
    if any(re.match(r"Transformer/encoderblock_\d+/", k) for k in p):
      raise DataError(f"{where('Transformer/')}: both scan-stacked 'encoderblock/' and "
                      f"per-block 'encoderblock_<i>/' parameters")
    depth = p[stacked[0]].shape[0] if p[stacked[0]].ndim else 0
    for key in stacked:
      a = p.pop(key)
      if a.ndim == 0 or a.shape[0] != depth:
        raise DataError(f"{where(key)}: scan-stacked parameter of shape {a.shape}; expected "
                        f"a leading depth axis of {depth} like {where(stacked[0])}")
      rest = key[len("Transformer/encoderblock/"):]
      for i in range(depth):
        p[f"Transformer/encoderblock_{i}/{rest}"] = a[i]
  return p


def _find_prefix(flat: Mapping[str, np.ndarray], prefix: str | None, source: str) -> str:
  if prefix is not None:
    prefix = prefix if prefix == "" or prefix.endswith("/") else prefix + "/"
    if f"{prefix}embedding/kernel" not in flat:
      raise DataError(f"{source}: no image tower under prefix {prefix!r}: missing key "
                      f"{prefix + 'embedding/kernel'!r} (expected shape (p, p, 3, width))"
                      + _similar(flat))
    return prefix
  for p in PREFIXES:
    if f"{p}embedding/kernel" in flat:
      return p
  raise DataError(f"{source}: no ViT image tower found: none of the keys "
                  f"{[p + 'embedding/kernel' for p in PREFIXES]}; pass prefix= for another "
                  f"location" + _similar(flat))


def _similar(flat: Mapping[str, np.ndarray]) -> str:
  hits = sorted(k for k in flat if k.endswith("embedding/kernel"))[:5]
  if hits:
    return f"; keys ending in 'embedding/kernel' in the file: {hits}"
  return f"; the file's first keys: {sorted(flat)[:5]}"


def _expected_shapes(a: dict) -> dict[str, tuple[int, ...]]:
  """{key (relative to the tower): shape} of every parameter of architecture `a`."""
  d, m, heads = a["width"], a["mlp_dim"], a["num_heads"]
  hd = d // heads

  def attn(s):
    out = {}
    for q in ("query", "key", "value"):
      out[f"{s}/{q}/kernel"] = (d, heads, hd)
      out[f"{s}/{q}/bias"] = (heads, hd)
    out[f"{s}/out/kernel"] = (heads, hd, d)
    out[f"{s}/out/bias"] = (d,)
    return out

  def ln(s):
    return {f"{s}/scale": (d,), f"{s}/bias": (d,)}

  def mlp(s):
    return {f"{s}/Dense_0/kernel": (d, m), f"{s}/Dense_0/bias": (m,),
            f"{s}/Dense_1/kernel": (m, d), f"{s}/Dense_1/bias": (d,)}

  ph, pw = a["patch_size"]
  gh, gw = a["grid"]
  shapes = {"embedding/kernel": (ph, pw, a["channels"], d), "embedding/bias": (d,)}
  if a["posemb"] == "learn":
    shapes["pos_embedding"] = (1, gh * gw, d)
  if a["cls_token"]:
    shapes["cls"] = (1, 1, d)
  for i in range(a["depth"]):
    s = f"Transformer/encoderblock_{i}"
    shapes.update({**ln(f"{s}/LayerNorm_0"), **attn(f"{s}/MultiHeadDotProductAttention_0"),
                   **ln(f"{s}/LayerNorm_1"), **mlp(f"{s}/MlpBlock_0")})
  shapes.update(ln("Transformer/encoder_norm"))
  if a["pool_type"] == "map":
    shapes.update({"MAPHead_0/probe": (1, 1, d),
                   **attn("MAPHead_0/MultiHeadDotProductAttention_0"),
                   **ln("MAPHead_0/LayerNorm_0"), **mlp("MAPHead_0/MlpBlock_0")})
  if a["pool_type"] != "none":
    rep = a["rep_size"]
    if rep:
      shapes.update({"pre_logits/kernel": (d, rep), "pre_logits/bias": (rep,)})
    if a["num_classes"]:
      k = a["num_classes"]
      shapes.update({"head/kernel": (rep or d, k), "head/bias": (k,)})
  return shapes


def _shape_of(p, key, where, ndim, expected: str) -> tuple[int, ...]:
  if key not in p:
    raise DataError(f"{where(key)}: missing key (expected shape {expected})")
  shape = tuple(p[key].shape)
  if len(shape) != ndim:
    raise DataError(f"{where(key)}: shape {shape}; expected {expected}")
  return shape


def _infer_arch(p: Mapping[str, np.ndarray], where, arch: dict) -> dict:
  """The architecture from the shapes, checked against the caller's `arch` fields."""
  unknown = sorted(set(arch) - set(ARCH_FIELDS))
  if unknown:
    raise ConfigError(f"vit.from_params: unknown architecture field(s) {unknown}; "
                      f"expected some of {ARCH_FIELDS}")
  ph, pw, channels, d = _shape_of(p, "embedding/kernel", where, 4,
                                  "(patch, patch, channels, width)")
  a: dict[str, Any] = {"patch_size": (ph, pw), "width": d, "channels": channels}
  a["posemb"] = arch.get("posemb", "learn")
  if a["posemb"] not in POSEMB_TYPES:
    raise ConfigError(f"vit.from_params: posemb {a['posemb']!r}; expected one of "
                      f"{POSEMB_TYPES}")
  if a["posemb"] == "learn":
    if "pos_embedding" not in p:
      raise DataError(f"{where('pos_embedding')}: missing key (expected shape (1, N, {d}); "
                      f"for a model trained with posemb='sincos2d', which stores none, pass "
                      f"posemb='sincos2d' and grid=(h, w))")
    n = _shape_of(p, "pos_embedding", where, 3, f"(1, N, {d})")[1]
    g = math.isqrt(n)
    if "grid" in arch:  # a non-square grid cannot be read off N alone
      if int(np.prod(arch["grid"])) != n:
        raise ConfigError(f"vit.from_params: grid={arch['grid']}, but {where('pos_embedding')}"
                          f" holds {n} positions")
    elif g * g != n:
      raise DataError(f"{where('pos_embedding')}: {n} positions are not a square grid; pass "
                      f"grid=(h, w)")
    a["grid"] = tuple(arch.get("grid", (g, g)))
  else:
    if "grid" not in arch:
      raise ConfigError("vit.from_params: posemb='sincos2d' needs grid=(h, w), the patch "
                        "grid of the training resolution")
    a["grid"] = tuple(arch["grid"])
  depth = 0
  while f"Transformer/encoderblock_{depth}/LayerNorm_0/scale" in p:
    depth += 1
  if depth == 0:
    _shape_of(p, "Transformer/encoderblock_0/LayerNorm_0/scale", where, 1, f"({d},)")
  a["depth"] = depth
  q = "Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel"
  a["num_heads"] = _shape_of(p, q, where, 3, f"({d}, heads, {d} / heads)")[1]
  mlp = "Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel"
  a["mlp_dim"] = _shape_of(p, mlp, where, 2, f"({d}, mlp_dim)")[1]
  a["cls_token"] = "cls" in p
  a["pool_type"] = ("map" if any(k.startswith("MAPHead_0/") for k in p)
                    else "tok" if a["cls_token"] else "gap")
  a["rep_size"] = (_shape_of(p, "pre_logits/kernel", where, 2, f"({d}, rep_size)")[1]
                   if "pre_logits/kernel" in p else None)
  a["num_classes"] = (_shape_of(p, "head/kernel", where, 2, "(width or rep_size, classes)")[1]
                      if "head/kernel" in p else None)

  for field, value in arch.items():
    if field in ("posemb", "grid"):
      continue
    have = a[field]
    if field == "patch_size":
      value = (value, value) if isinstance(value, int) else tuple(value)
    if field == "pool_type":
      if value not in POOL_TYPES:
        raise ConfigError(f"vit.from_params: pool_type {value!r}; expected one of "
                          f"{POOL_TYPES}")
      if value not in (have, "none"):
        raise ConfigError(f"vit.from_params: pool_type {value!r}, but the file's image "
                          f"tower has pool_type {have!r} (only 'none' may replace it)")
    elif value != have:
      raise ConfigError(f"vit.from_params: {field}={value!r}, but the file's shapes say "
                        f"{have!r}")
    a[field] = value
  if a["width"] % a["num_heads"]:
    raise DataError(f"{where(q)}: {a['num_heads']} heads do not divide the width {d}")
  return a


def from_params(flat: Mapping[str, np.ndarray], *, prefix: str | None = None,
                name: str | None = None, source: str = "parameters",
                image_size: int | Sequence[int] | None = None,
                value_range: tuple[float, float] = (-1.0, 1.0),
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                precision: Any = None, **arch) -> Backbone:
  """A ViT `Backbone` from big_vision's flat {"a/b/c": array} parameters.

  Args:
    flat: the file's arrays, keys joined by "/" (`read_npz`, or any mapping: only the
      image tower's keys are read).
    prefix: where the image tower sits ("params/img/", ...); None tries `PREFIXES`.
    name: the Backbone's name; default "siglip" for a two-tower file's image tower
      (prefix ending in "img/"), else "vit".
    source: the file, for error messages.
    image_size: H or (H, W) the preprocessing resizes to; default patch size times the
      grid (see the module doc for resolutions that are not a multiple of the patch).
    value_range, mean, std: input normalisation (`Preprocess`).
    precision: matmul precision of the module (`ViT.precision`).
    **arch: architecture fields (`ARCH_FIELDS`), each checked against the shapes; needed
      only for posemb="sincos2d" (with grid=(h, w)) or to drop pooling (pool_type="none").

  Returns:
    Backbone(name, ViT(..., token_maps=True), {"params": ...}, Preprocess, stages);
    token stages are (B, h, w, D) maps, pooled / pre_logits / logits (B, .) vectors.

  Raises:
    DataError: no image tower at the prefix, a missing or unknown key, or a wrong shape;
      the message names the file, the key (with its prefix) and the expected shape.
    ConfigError: an architecture field that contradicts the file.
  """
  import jax.numpy as jnp

  prefix = _find_prefix(flat, prefix, source)

  def where(key):
    return f"{source}: {prefix + key!r}"

  # Keys, not items: a lazy mapping (`load`'s open .npz) then reads only the image tower.
  p = {k[len(prefix):]: _recover_dtype(np.asarray(flat[k]))
       for k in flat if k.startswith(prefix)}
  p = _normalise_layout(p, where)
  if "pos_embedding" in p:  # [cls] posemb stored as the first of N + 1 rows (old ViTs)
    n = p["pos_embedding"].shape[1] if p["pos_embedding"].ndim == 3 else 0
    if n > 1 and math.isqrt(n - 1) ** 2 == n - 1 and math.isqrt(n) ** 2 != n:
      pe = p["pos_embedding"]
      p["pos_embedding"] = pe[:, 1:]
      if "cls" in p:
        p["cls"] = p["cls"] + pe[:, :1]
  a = _infer_arch(p, where, arch)
  shapes = _expected_shapes(a)

  for key, shape in shapes.items():
    if key not in p:
      raise DataError(f"{where(key)}: missing key (expected shape {shape})")
    if tuple(p[key].shape) != shape:
      raise DataError(f"{where(key)}: shape {tuple(p[key].shape)}; expected {shape}")
  # Parameters of heads the caller switched off (pool_type "none") are known, not unused.
  known = set(shapes)
  if a["pool_type"] == "none":
    known |= {k for k in p if k.split("/")[0] in ("MAPHead_0", "pre_logits", "head")}
  unknown = sorted(set(p) - known)
  if unknown:
    listed = ", ".join(repr(prefix + k) for k in unknown[:5])
    more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
    raise DataError(f"{source}: unknown key(s) {listed}{more} in the ViT image tower at "
                    f"prefix {prefix!r}")

  params: dict = {}
  for key in shapes:
    node = params
    *scopes, leaf = key.split("/")
    for s in scopes:
      node = node.setdefault(s, {})
    node[leaf] = jnp.asarray(np.asarray(p[key], np.float32))

  module = _modules()["ViT"](
      patch_size=a["patch_size"], width=a["width"], depth=a["depth"], mlp_dim=a["mlp_dim"],
      num_heads=a["num_heads"], pool_type=a["pool_type"], cls_token=a["cls_token"],
      num_classes=a["num_classes"], rep_size=a["rep_size"], posemb=a["posemb"],
      token_maps=True, precision=precision)
  gh, gw = a["grid"]
  ph, pw = a["patch_size"]
  if image_size is None:
    size = (gh * ph, gw * pw)
  else:
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if (size[0] // ph, size[1] // pw) != (gh, gw):
      raise ConfigError(f"vit.from_params: image_size {size} gives a "
                        f"{size[0] // ph}x{size[1] // pw} patch grid; the position embedding "
                        f"of {source} is {gh}x{gw} (patch {ph}x{pw})")
  preprocess = Preprocess(size, a["channels"], tuple(value_range),
                          None if mean is None else tuple(mean),
                          None if std is None else tuple(std))
  if name is None:
    name = "siglip" if prefix.endswith("img/") else "vit"
  stages = stage_names(a["depth"], a["pool_type"], a["rep_size"], a["num_classes"])
  return Backbone(name=name, module=module, variables={"params": params},
                  preprocess=preprocess, stages=stages)


def load(path: str | os.PathLike, **kwargs) -> Backbone:
  """A ViT / SigLIP image encoder from a big_vision .npz file (e.g.
  gs://big_vision/siglip/webli_en_b16_224_63724782.npz copied locally): `from_params` of
  the file's arrays with source=path; see there for the keyword arguments."""
  path = os.fspath(path)
  # The open archive reads arrays on access: a two-tower file's text tower stays on disk.
  with _open_npz(path) as npz:
    return from_params(npz, source=path, **kwargs)
