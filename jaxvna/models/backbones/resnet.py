"""torchvision ResNet-18 / ResNet-50 as a Flax module, loaded from a torchvision state_dict.

The architecture is torchvision's (`torchvision/models/resnet.py`), layer for layer:

  stem     conv 7x7 stride 2 pad 3 (no bias) -> BatchNorm -> ReLU
  pool1    max pool 3x3 stride 2 pad 1 (padding never wins: it is -inf)
  layer1..4  residual blocks, 64 / 128 / 256 / 512 planes, stride 1 / 2 / 2 / 2 on the
           first block of each stage; "basic" blocks (ResNet-18: two 3x3 convs) or
           "bottleneck" blocks (ResNet-50: 1x1 -> 3x3 -> 1x1 with 4x expansion). The
           bottleneck's stride is on its 3x3 conv ("ResNet v1.5", as torchvision), not on
           the first 1x1 (the paper's v1). A block whose stride or channel count changes
           has a projection shortcut, conv 1x1 with the block's stride -> BatchNorm.
  avgpool  global mean over h, w
  logits   fully connected, 1000 ImageNet classes (dropped when num_classes = 0)

Every 3x3 conv pads 1 and every 1x1 conv pads 0 with zeros on each side, as PyTorch's
padding=k//2 (lax "SAME" would pad 0 before and 1 after at stride 2); BatchNorm has
eps 1e-5.

Kernel form: the convolutions and the fc layer are `towers.Conv` / `towers.Dense`, so the
project's one switch (`towers.use_kernel_form`) governs them: by default the im2col form on
CPU, whose backward pass is fast (fine-tuning), plain XLA convolutions on GPU and TPU. For
forward passes only on CPU, trace under `use_kernel_form("xla")`: ResNet-50, a batch of 16
at 224 x 224 on 2 cores, runs in 1.5 s instead of 2.4 s and compiles in 4 s instead of 13 s.

Shapes (NHWC; a 224 x 224 input; C = 64 / 128 / 256 / 512 planes, x4 for ResNet-50):
  stem (B, 112, 112, 64), pool1 (B, 56, 56, 64), layer1 (B, 56, 56, C1),
  layer2 (B, 28, 28, C2), layer3 (B, 14, 14, C3), layer4 (B, 7, 7, C4), avgpool (B, C4),
  logits (B, 1000).

Loading: `from_state_dict` takes torchvision's parameter names ("conv1.weight",
"layer1.0.downsample.1.running_var", "fc.bias", ...) to arrays, checks every name and
shape, and converts OIHW conv kernels to HWIO and fc (out, in) to (in, out). `load` reads
such a state_dict from a `torch.save` file (.pth / .pt; needs torch) or from an .npz of the
same names (numpy only). Weights are never downloaded here: see the README for how to get
torchvision's ImageNet weights once on a machine with internet.

Train mode (`train=True`, "batch_stats" mutable) normalises with the batch's biased
variance and keeps running statistics with momentum 0.9 (torch's momentum 0.1), but, unlike
torch, updates the running variance with the biased batch variance too.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxvna.data.dataset import DataError
from jaxvna.errors import ConfigError, UserError
from jaxvna.models.backbones import Backbone
from jaxvna.models.towers import Conv, Dense

Dtype = Any

# ImageNet statistics of torchvision's classification presets, RGB order.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

BLOCKS = ("basic", "bottleneck")
# depth -> (blocks per stage, block kind): torchvision's resnet18 and resnet50.
DEPTHS = {18: ((2, 2, 2, 2), "basic"), 50: ((3, 4, 6, 3), "bottleneck")}
STAGES = ("stem", "pool1", "layer1", "layer2", "layer3", "layer4", "avgpool", "logits")
_PLANES = (64, 128, 256, 512)
_EXPANSION = {"basic": 1, "bottleneck": 4}
_IGNORED_SUFFIX = ".num_batches_tracked"  # a BatchNorm step counter; no role in eval


# ----------------------------------------------------------------------------- preprocessing

def preprocess(images: jax.Array, image_size: int = 224) -> jax.Array:
  """Images as the network was trained on them: RGB, image_size^2, ImageNet-normalised.

  The resize is `jax.image.resize(method="linear", antialias=True)`, which matches
  torchvision's `transforms.functional.resize(t, [s, s], antialias=True)` (bilinear) to
  ~1e-6 on upsampling (32 -> 224) and to 1.5e-5 on downsampling (300 -> 224), values in
  [0, 1]; on downsampling both are that far from a float64 resize, so the difference is
  float32 rounding of the filter weights. The whole image is resized to a square, without
  torchvision's ImageNet centre crop (resize 256, crop 224): the crop would cut off the
  border of the stimulus the neurons saw.

  Args:
    images: (B, H, W, C) float in [0, 1] (uint8 is divided by 255), C = 1 (grey, repeated
      to RGB) or 3 (RGB).
    image_size: the side of the square output.

  Returns:
    (B, image_size, image_size, 3) float32, (x - mean) / std per channel.
  """
  images = jnp.asarray(images)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise DataError(f"images: expected shape (B, H, W, C) with C = 1 or 3, got shape "
                    f"{tuple(images.shape)}")
  x = images.astype(jnp.float32)
  if images.dtype == jnp.uint8:
    x = x / 255.0
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  if x.shape[1:3] != (image_size, image_size):
    x = jax.image.resize(x, (x.shape[0], image_size, image_size, 3), method="linear",
                         antialias=True)
  mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
  std = jnp.asarray(IMAGENET_STD, jnp.float32)
  return (x - mean) / std


# ----------------------------------------------------------------------------- the module

def _batch_norm(train: bool, dtype: Dtype, name: str) -> nn.BatchNorm:
  # torch's momentum 0.1 weighs the new batch; flax's momentum weighs the running value.
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      dtype=dtype, name=name)


class BasicBlock(nn.Module):
  """3x3 conv (stride) -> BN -> ReLU -> 3x3 conv -> BN, + shortcut, -> ReLU.

  (B, H, W, C) -> (B, H / strides, W / strides, planes).
  """
  planes: int
  strides: int
  projection: bool  # conv 1x1 + BN shortcut (channels or stride change), else identity
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = Conv(self.planes, 3, self.strides, use_bias=False, dtype=self.dtype, name="conv1")(x)
    y = nn.relu(_batch_norm(train, self.dtype, "bn1")(y))
    y = Conv(self.planes, 3, 1, use_bias=False, dtype=self.dtype, name="conv2")(y)
    y = _batch_norm(train, self.dtype, "bn2")(y)
    return nn.relu(y + _shortcut(self, x, self.planes, train))


class Bottleneck(nn.Module):
  """1x1 conv -> BN -> ReLU -> 3x3 conv (stride) -> BN -> ReLU -> 1x1 conv (4 x planes)
  -> BN, + shortcut, -> ReLU ("v1.5": the stride is on the 3x3 conv).

  (B, H, W, C) -> (B, H / strides, W / strides, 4 * planes).
  """
  planes: int
  strides: int
  projection: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = Conv(self.planes, 1, 1, use_bias=False, dtype=self.dtype, name="conv1")(x)
    y = nn.relu(_batch_norm(train, self.dtype, "bn1")(y))
    y = Conv(self.planes, 3, self.strides, use_bias=False, dtype=self.dtype, name="conv2")(y)
    y = nn.relu(_batch_norm(train, self.dtype, "bn2")(y))
    y = Conv(4 * self.planes, 1, 1, use_bias=False, dtype=self.dtype, name="conv3")(y)
    y = _batch_norm(train, self.dtype, "bn3")(y)
    return nn.relu(y + _shortcut(self, x, 4 * self.planes, train))


def _shortcut(block: nn.Module, x: jax.Array, features: int, train: bool) -> jax.Array:
  """Identity, or conv 1x1 (the block's stride) -> BN as torchvision's `downsample`.

  Called inside a block's compact __call__, so the layers are that block's children.
  """
  if not block.projection:
    return x
  x = Conv(features, 1, block.strides, use_bias=False, dtype=block.dtype,
           name="downsample_conv")(x)
  return _batch_norm(train, block.dtype, "downsample_bn")(x)


class ResNet(nn.Module):
  """torchvision's ResNet (see the module docstring), returning every stage.

  __call__(x (B, H, W, 3) float, already `preprocess`ed, train=False) -> {"stem": (B, H/2,
  W/2, 64), "pool1": (B, H/4, W/4, 64), "layer1".."layer4": NHWC maps, "avgpool":
  (B, C4) float32, and "logits": (B, num_classes) float32 when num_classes > 0}. With
  train=False BatchNorm uses the running statistics of the "batch_stats" collection.
  """
  stage_sizes: tuple[int, ...]  # blocks per stage, 4 stages
  block: str  # "basic" | "bottleneck"
  num_classes: int = 1000  # 0: no fc head, no "logits"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    if self.block not in BLOCKS:
      raise ConfigError(f"ResNet.block: unknown {self.block!r}; expected one of {BLOCKS}")
    if len(self.stage_sizes) != len(_PLANES):
      raise ConfigError(f"ResNet.stage_sizes: expected {len(_PLANES)} stages, got "
                        f"{tuple(self.stage_sizes)}")
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"ResNet: x must be (B, H, W, 3), got shape {x.shape}")
    out = {}
    x = Conv(64, 7, 2, use_bias=False, dtype=self.dtype, name="conv1")(x)
    x = out["stem"] = nn.relu(_batch_norm(train, self.dtype, "bn1")(x))
    x = out["pool1"] = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    block_cls = BasicBlock if self.block == "basic" else Bottleneck
    channels = 64
    for stage, (planes, blocks) in enumerate(zip(_PLANES, self.stage_sizes)):
      for i in range(blocks):
        strides = 2 if stage > 0 and i == 0 else 1
        features = planes * _EXPANSION[self.block]
        x = block_cls(planes, strides, projection=strides != 1 or channels != features,
                      dtype=self.dtype, name=f"layer{stage + 1}_{i}")(x, train)
        channels = features
      out[f"layer{stage + 1}"] = x
    x = out["avgpool"] = x.astype(jnp.float32).mean(axis=(1, 2))
    if self.num_classes:
      out["logits"] = Dense(self.num_classes, dtype=self.dtype, name="fc")(
          x.astype(self.dtype)).astype(jnp.float32)
    return out


def build(depth: int, num_classes: int = 1000, dtype: Dtype = jnp.float32) -> ResNet:
  """ResNet-`depth` (18 or 50) as torchvision's resnet18 / resnet50; num_classes=0 drops
  the fc head."""
  if depth not in DEPTHS:
    raise ConfigError(f"depth: {depth!r} is not supported; expected one of {sorted(DEPTHS)} "
                      "(torchvision resnet18 / resnet50)")
  if num_classes < 0:
    raise ConfigError(f"num_classes: expected >= 0 (0 drops the fc head), got {num_classes}")
  stage_sizes, block = DEPTHS[depth]
  return ResNet(stage_sizes, block, num_classes, dtype)


def resnet18(num_classes: int = 1000, dtype: Dtype = jnp.float32) -> ResNet:
  return build(18, num_classes, dtype)


def resnet50(num_classes: int = 1000, dtype: Dtype = jnp.float32) -> ResNet:
  return build(50, num_classes, dtype)


# ----------------------------------------------------------------------------- loading

def _torch_name(path: tuple[str, ...]) -> str:
  """The torchvision name of a variable at flax `path` (collection first), e.g.
  ("batch_stats", "layer1_0", "downsample_bn", "var") -> "layer1.0.downsample.1.running_var".
  """
  collection, *modules, leaf = path
  parts = []
  for m in modules:
    if m.startswith("layer"):  # "layer1_0" -> "layer1.0"
      parts.extend(m.split("_"))
    elif m.startswith("downsample_"):  # torchvision's downsample is Sequential(conv, bn)
      parts.extend(("downsample", "0" if m == "downsample_conv" else "1"))
    else:
      parts.append(m)
  suffix = {("params", "kernel"): "weight", ("params", "scale"): "weight",
            ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
            ("batch_stats", "var"): "running_var"}[collection, leaf]
  return ".".join((*parts, suffix))


def _to_torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  """The torch layout of a flax shape: HWIO -> OIHW, (in, out) -> (out, in)."""
  if len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  return tuple(reversed(shape))


def _from_torch(value: np.ndarray) -> np.ndarray:
  """A torch-layout array in flax layout: OIHW -> HWIO, (out, in) -> (in, out)."""
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  return value.T


def _as_numpy(value) -> np.ndarray:
  """numpy float32 of a numpy array or a torch tensor (detached, moved to the CPU)."""
  if hasattr(value, "detach"):  # a torch tensor; bfloat16 has no numpy dtype, so go float
    value = value.detach().cpu()
    value = value.float() if value.is_floating_point() else value
  return np.asarray(value, dtype=np.float32)


@functools.lru_cache(maxsize=None)
def _layout(depth: int, num_classes: int) -> tuple[tuple[tuple[str, ...], str,
                                                         tuple[int, ...]], ...]:
  """((flax path, torchvision name, torch-layout shape), ...) of every variable."""
  module = build(depth, num_classes)
  # Tracing init at a small size gives every variable's shape (they do not depend on H, W).
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  return tuple((path, _torch_name(path), _to_torch_shape(s.shape))
               for path, s in traverse_util.flatten_dict(shapes).items())


def from_state_dict(state_dict: Mapping[str, Any], depth: int, *, num_classes: int = 1000,
                    image_size: int = 224) -> Backbone:
  """A ResNet-`depth` backbone from a torchvision state_dict.

  Args:
    state_dict: torchvision names ("conv1.weight", "bn1.running_mean",
      "layer1.0.downsample.0.weight", "fc.weight", ...) -> numpy arrays or torch tensors,
      as `torchvision.models.resnet50().state_dict()`. "num_batches_tracked" entries are
      ignored, and so are "fc.*" when num_classes = 0.
    depth: 18 or 50.
    num_classes: classes of the fc head (1000 for ImageNet weights); 0 drops the head.
    image_size: the side of the square input that `preprocess` resizes images to.

  Returns:
    Backbone "resnet{depth}" with stages `STAGES` ("logits" only with a head), variables
    {"params", "batch_stats"} in float32.

  Raises:
    ConfigError: an unsupported depth or num_classes.
    DataError: a key is missing, has the wrong shape, or is not a ResNet-`depth` name;
      the message names the key and the expected shape (torch layout).
  """
  module = build(depth, num_classes)
  layout = _layout(depth, num_classes)
  where = f"state_dict of resnet{depth}"
  missing = [f"{name!r} (expected shape {shape})" for _, name, shape in layout
             if name not in state_dict]
  if missing:
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    raise DataError(f"{where}: missing key {', '.join(missing[:5])}{more}")
  known = {name for _, name, _ in layout}
  unexpected = [k for k in state_dict if k not in known and not k.endswith(_IGNORED_SUFFIX)
                and not (num_classes == 0 and k.startswith("fc."))]
  if unexpected:
    more = f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""
    raise DataError(f"{where}: unexpected key {', '.join(map(repr, unexpected[:5]))}{more} "
                    f"(the state_dict of another network or depth?)")
  flat = {}
  for path, name, shape in layout:
    value = _as_numpy(state_dict[name])
    if value.shape != shape:
      hint = (" (pass num_classes for a head of another size, or 0 to drop it)"
              if name.startswith("fc.") else "")
      raise DataError(f"{where}: key {name!r} has shape {value.shape}, expected {shape}{hint}")
    flat[path] = jnp.asarray(_from_torch(value))
  return _backbone(module, traverse_util.unflatten_dict(flat), depth, image_size)


def _backbone(module: ResNet, variables: dict, depth: int, image_size: int) -> Backbone:
  stages = STAGES if module.num_classes else STAGES[:-1]
  return Backbone(name=f"resnet{depth}", module=module, variables=variables,
                  preprocess=functools.partial(preprocess, image_size=image_size),
                  stages=stages)


def random_init(depth: int, *, seed: int = 0, num_classes: int = 1000,
                image_size: int = 224) -> Backbone:
  """A ResNet-`depth` backbone with random weights, drawn with numpy (instant, unlike
  compiling flax's initialisers): He-normal kernels (sd sqrt(2 / fan_in)), zero biases,
  BatchNorm scale 1, shift 0 and running statistics 0 and 1. The pipeline without
  meaningful features, for tests and smoke runs."""
  module = build(depth, num_classes)
  rng = np.random.default_rng(seed)
  flat = {}
  for path, _, torch_shape in _layout(depth, num_classes):
    shape = _from_torch(np.empty(torch_shape, np.float32)).shape
    leaf = path[-1]
    if leaf == "kernel":
      value = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[:-1])), shape)
    else:  # bias, BatchNorm shift and mean: 0; BatchNorm scale and variance: 1
      value = np.full(shape, 1.0 if leaf in ("scale", "var") else 0.0)
    flat[path] = jnp.asarray(value, jnp.float32)
  return _backbone(module, traverse_util.unflatten_dict(flat), depth, image_size)


def load(path: str | pathlib.Path, depth: int, *, num_classes: int = 1000,
         image_size: int = 224) -> Backbone:
  """A ResNet-`depth` backbone from a torchvision state_dict file.

  Args:
    path: a .pth / .pt file written by `torch.save(model.state_dict(), path)` (read with
      torch, on the CPU, weights_only), or an .npz of the same names (numpy only).
    depth, num_classes, image_size: as `from_state_dict`.

  Raises:
    DataError: the file is missing, unreadable, of another kind, or not a state_dict of
      ResNet-`depth` (see `from_state_dict`).
    UserError: a .pth / .pt file and torch is not installed.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise DataError(f"{path}: file is missing; expected a ResNet-{depth} state_dict "
                    "(.pth / .pt / .npz)")
  if not path.is_file():
    raise DataError(f"{path}: is a folder; expected a .pth / .pt / .npz file")
  suffix = path.suffix.lower()
  if suffix == ".npz":
    try:
      with np.load(path, allow_pickle=False) as npz:
        state_dict = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as e:
      raise DataError(f"{path}: cannot read as an .npz file ({e})") from e
  elif suffix in (".pth", ".pt"):
    try:
      import torch  # noqa: PLC0415 -- torch is large and optional: only .pth files need it
    except ImportError as e:
      raise UserError(f"{path}: reading a .pth / .pt file needs torch, which is not "
                      "installed; install it, or convert the file to .npz once where torch "
                      "is (see the README)") from e
    try:
      state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds (pickle, zip, RuntimeError)
      raise DataError(f"{path}: cannot read as a torch state_dict ({e})") from e
  else:
    raise DataError(f"{path}: unknown file kind {path.suffix!r}; expected .pth, .pt or .npz")
  if not isinstance(state_dict, Mapping):
    raise DataError(f"{path}: holds a {type(state_dict).__name__}, expected a state_dict "
                    "(a mapping of names to tensors: torch.save(model.state_dict(), path))")
  try:
    return from_state_dict(state_dict, depth, num_classes=num_classes, image_size=image_size)
  except DataError as e:
    raise DataError(f"{path}: {e}") from e
