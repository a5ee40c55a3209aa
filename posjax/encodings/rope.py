"""Rotary position embedding (RoPE) and its context-extension scalings.

RoPE (Su et al. 2021) rotates each pair of query/key dimensions by an angle proportional to the
token's position, so the q·k logit depends on positions only through their difference. The
scalings here change the rotation frequencies so that a model trained on `original_max_len` tokens
can read longer sequences: linear position interpolation, fixed and dynamic NTK-aware scaling, YaRN
and the Llama 3.1 rule. Their frequencies follow Hugging Face transformers' `ROPE_INIT_FUNCTIONS`
(the de-facto reference), checked by `tests/encodings/test_rope.py` against fixtures made with it.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from posjax.encodings.scheme import Scheme

LAYOUTS = ("half", "interleaved")
SCALING_TYPES = ("linear", "ntk", "dynamic", "yarn", "llama3")

# Keys each scaling type requires, and its optional keys with their defaults. `original_max_len`
# is accepted (and unused) by `linear` and `ntk` so one config can switch types freely.
_REQUIRED_KEYS = {
    "linear": ("factor",),
    "ntk": ("factor",),
    "dynamic": ("factor", "original_max_len"),
    "yarn": ("factor", "original_max_len"),
    "llama3": ("factor", "original_max_len"),
}
_OPTIONAL_KEYS = {
    "linear": {"original_max_len": None},
    "ntk": {"original_max_len": None},
    "dynamic": {},
    "yarn": {"beta_fast": 32.0, "beta_slow": 1.0, "attention_factor": None, "mscale": None,
             "mscale_all_dim": None, "truncate": True},
    "llama3": {"low_freq_factor": 1.0, "high_freq_factor": 4.0},
}


def num_rotary_dims(head_dim: int, rotary_fraction: float = 1.0) -> int:
  """How many leading dims of a head RoPE rotates: `int(head_dim * rotary_fraction)`.

  Raises a `ValueError` unless `head_dim` is even and positive, `0 < rotary_fraction <= 1`, and the
  result is even and positive (the rotation acts on pairs of dims).
  """
  if isinstance(head_dim, bool) or not isinstance(head_dim, numbers.Integral) or head_dim <= 0:
    raise ValueError(f"head_dim must be a positive integer, got {head_dim!r}")
  if head_dim % 2:
    raise ValueError(f"RoPE rotates pairs of dims, so head_dim must be even, got {head_dim}")
  if (isinstance(rotary_fraction, bool) or not isinstance(rotary_fraction, numbers.Real)
      or not 0.0 < rotary_fraction <= 1.0):
    raise ValueError(f"rotary_fraction must be a number in (0, 1], got {rotary_fraction!r}")
  rotary_dim = int(head_dim * rotary_fraction)
  if rotary_dim <= 0 or rotary_dim % 2:
    raise ValueError(
        f"int(head_dim * rotary_fraction) = int({head_dim} * {rotary_fraction}) = {rotary_dim} "
        "rotary dims; it must be even and positive: choose a rotary_fraction that gives that")
  return rotary_dim


def _positive_number(scaling_type: str, key: str, value: Any, *, at_least: float = 0.0,
                     strict: bool = True) -> float:
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise ValueError(f"RoPE scaling {scaling_type!r}: {key!r} must be a number, got {value!r}")
  if value < at_least or (strict and value == at_least):
    bound = f"> {at_least}" if strict else f">= {at_least}"
    raise ValueError(f"RoPE scaling {scaling_type!r}: {key!r} must be {bound}, got {value!r}")
  return float(value)


def check_scaling(scaling: Optional[Mapping[str, Any]]) -> Optional[dict[str, Any]]:
  """Validates a RoPE `scaling` config; returns it as a dict with defaults filled in (or `None`).

  `scaling` is `None` or a mapping with `type` in `SCALING_TYPES` and that type's keys (see
  `rope_frequencies`). A missing, unknown or invalid key raises a `ValueError` that names it.
  """
  if scaling is None:
    return None
  try:
    config = dict(scaling)
  except (TypeError, ValueError):
    raise ValueError(f"RoPE scaling must be None or a mapping, got {scaling!r}") from None
  if "type" not in config:
    raise ValueError(f"RoPE scaling {config} has no 'type'; use one of {SCALING_TYPES}")
  scaling_type = config.pop("type")
  if scaling_type not in _REQUIRED_KEYS:
    raise ValueError(f"unknown RoPE scaling type {scaling_type!r}; known types: {SCALING_TYPES}")
  required, optional = _REQUIRED_KEYS[scaling_type], _OPTIONAL_KEYS[scaling_type]
  missing = [key for key in required if config.get(key) is None]
  if missing:
    raise ValueError(f"RoPE scaling {scaling_type!r} needs key(s) {missing}; got {sorted(config)}")
  unknown = sorted(set(config) - set(required) - set(optional))
  if unknown:
    raise ValueError(f"RoPE scaling {scaling_type!r} has no key(s) {unknown}; its keys are "
                     f"{sorted(required)} and optionally {sorted(optional)}")
  config = {**optional, **config}

  config["factor"] = _positive_number(scaling_type, "factor", config["factor"], at_least=1.0,
                                      strict=False)
  if config["original_max_len"] is not None:
    config["original_max_len"] = _positive_number(scaling_type, "original_max_len",
                                                  config["original_max_len"])
  if scaling_type == "yarn":
    for key in ("beta_fast", "beta_slow"):
      config[key] = _positive_number(scaling_type, key, config[key])
    if config["beta_fast"] < config["beta_slow"]:
      raise ValueError(f"RoPE scaling 'yarn': beta_fast ({config['beta_fast']}) must be >= "
                       f"beta_slow ({config['beta_slow']})")
    for key in ("attention_factor", "mscale", "mscale_all_dim"):
      if config[key] is not None:
        config[key] = _positive_number(scaling_type, key, config[key])
    if not isinstance(config["truncate"], bool):
      raise ValueError(
          f"RoPE scaling 'yarn': 'truncate' must be a bool, got {config['truncate']!r}")
  if scaling_type == "llama3":
    low = _positive_number(scaling_type, "low_freq_factor", config["low_freq_factor"])
    high = _positive_number(scaling_type, "high_freq_factor", config["high_freq_factor"])
    if high <= low:
      raise ValueError(f"RoPE scaling 'llama3': high_freq_factor ({high}) must be > "
                       f"low_freq_factor ({low})")
    config["low_freq_factor"], config["high_freq_factor"] = low, high
  return {"type": scaling_type, **config}


def _plain_inv_freq(rotary_dim: int, base):
  """`theta_i = base^(-2i/d)`, i = 0 .. d/2 - 1, `[d/2]` (RoFormer).

  float64 numpy for a Python-number base, so the caller's single rounding to float32 gives the
  same frequencies eagerly, under jit (where XLA would constant-fold a float32 `pow`, not always
  to the same ulp) and on every backend; float32 jnp for a traced base (dynamic NTK).
  """
  exponent = np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim
  if isinstance(base, numbers.Real):
    return 1.0 / float(base) ** exponent
  return 1.0 / jnp.power(base.astype(jnp.float32), exponent.astype(np.float32))


def _ntk_exponent(rotary_dim: int, scaling_type: str) -> float:
  if rotary_dim <= 2:
    raise ValueError(f"RoPE scaling {scaling_type!r} scales the base by factor^(d/(d-2)), so it "
                     f"needs more than 2 rotary dims, got {rotary_dim}")
  return rotary_dim / (rotary_dim - 2)


def _dynamic_base(base: float, rotary_dim: int, config: dict[str, Any], seq_len):
  """Dynamic NTK base: unchanged up to `original_max_len`, then grows with `seq_len`.

  A Python float for a Python/numpy `seq_len`, a float32 array for a JAX one (maybe traced).
  """
  factor, original = config["factor"], config["original_max_len"]
  exponent = _ntk_exponent(rotary_dim, "dynamic")
  if seq_len is None:
    return base
  if isinstance(seq_len, numbers.Real):
    stretch = factor * max(float(seq_len), original) / original - (factor - 1.0)
    return base * stretch ** exponent
  # maximum() rather than a Python `if`, so a traced seq_len works under jit; at
  # seq_len <= original the stretch below is exactly 1.
  seq_len = jnp.maximum(jnp.asarray(seq_len, jnp.float32), original)
  stretch = factor * seq_len / original - (factor - 1.0)
  return base * jnp.power(stretch, exponent)


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
  return 1.0 if factor <= 1.0 else 0.1 * mscale * math.log(factor) + 1.0


def _yarn(rotary_dim: int, base: float, config: dict[str, Any]) -> tuple[np.ndarray, float]:
  """YaRN "NTK-by-parts" frequencies and attention scale (Peng et al. 2023), float64."""
  factor, original = config["factor"], config["original_max_len"]
  if config["attention_factor"] is not None:
    attention_scale = config["attention_factor"]
  elif config["mscale"] and config["mscale_all_dim"]:
    attention_scale = (_yarn_mscale(factor, config["mscale"])
                       / _yarn_mscale(factor, config["mscale_all_dim"]))
  else:
    attention_scale = _yarn_mscale(factor)

  def correction_dim(num_rotations: float) -> float:
    # The dim index whose wavelength fits `num_rotations` times into the original context.
    return (rotary_dim * math.log(original / (num_rotations * 2 * math.pi))
            / (2 * math.log(base)))

  low, high = correction_dim(config["beta_fast"]), correction_dim(config["beta_slow"])
  if config["truncate"]:
    low, high = math.floor(low), math.ceil(high)
  # Upper clamp at d - 1 (not d/2 - 1) and the 0.001 below are HF transformers' choices.
  low, high = max(low, 0), min(high, rotary_dim - 1)
  if low == high:
    high += 0.001
  ramp = np.clip((np.arange(rotary_dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)

  extrapolated = _plain_inv_freq(rotary_dim, base)
  interpolated = extrapolated / factor
  # ramp = 0 (high-frequency dims, many rotations in the original context): keep RoPE as is;
  # ramp = 1 (low-frequency dims): interpolate positions like PI.
  inv_freq = interpolated * ramp + extrapolated * (1.0 - ramp)
  return inv_freq, float(attention_scale)


def _llama3(rotary_dim: int, base: float, config: dict[str, Any]) -> np.ndarray:
  """Llama 3.1 frequencies: divide long wavelengths by `factor`, keep short, blend in between."""
  factor, original = config["factor"], config["original_max_len"]
  low, high = config["low_freq_factor"], config["high_freq_factor"]
  inv_freq = _plain_inv_freq(rotary_dim, base)
  wavelength = 2 * math.pi / inv_freq
  smooth = (original / wavelength - low) / (high - low)
  blended = (1.0 - smooth) * inv_freq / factor + smooth * inv_freq
  return np.where(wavelength > original / low, inv_freq / factor,
                  np.where(wavelength < original / high, inv_freq, blended))


def rope_frequencies(head_dim: int, *, base: float = 10000.0,
                     scaling: Optional[Mapping[str, Any]] = None, seq_len=None,
                     rotary_fraction: float = 1.0) -> tuple[jax.Array, float]:
  """RoPE inverse frequencies `theta_i`, float32 `[d/2]`, and the attention scale.

  With d = `int(head_dim * rotary_fraction)` rotary dims, plain RoPE (Su et al. 2021, "RoFormer:
  Enhanced Transformer with Rotary Position Embedding") uses `theta_i = base^(-2i/d)`. `scaling`
  (`None` or a dict with a `type`) changes them for context extension, with `s = factor` and
  `L = original_max_len` (the training context):

  - `linear`: position interpolation, `theta_i / s` (Chen et al. 2023, "Extending Context Window
    of Large Language Models via Positional Interpolation"). Keys: `factor`.
  - `ntk`: fixed NTK-aware scaling, base' = base * s^(d/(d-2)) (bloc97 2023, "NTK-Aware Scaled
    RoPE", r/LocalLLaMA; also described by Peng et al. 2023). Keys: `factor`.
  - `dynamic`: dynamic NTK (emozilla 2023, r/LocalLLaMA; also in Peng et al. 2023), as in HF
    transformers: base' = base * (s * T / L - (s - 1))^(d/(d-2)) with T = max(seq_len, L), so
    it is plain RoPE while seq_len <= L (or `seq_len is None`). `seq_len` may be traced.
    Keys: `factor`, `original_max_len`.
  - `yarn`: "NTK-by-parts" interpolation plus an attention temperature (Peng, Quesnelle, Fan,
    Shippole 2023, "YaRN: Efficient Context Window Extension of Large Language Models").
    theta'_i = theta_i / s * r_i + theta_i * (1 - r_i), with r_i a linear ramp in i from 0 at the
    dim that rotates `beta_fast` times in L tokens to 1 at the one that rotates `beta_slow` times
    (dim of b rotations: d * ln(L / (2 pi b)) / (2 ln base), floored/ceiled when `truncate`).
    Attention scale 0.1 ln(s) + 1, or `attention_factor` if given, or (DeepSeek's variant, when
    `mscale` and `mscale_all_dim` are both set) the ratio of 0.1 * m * ln(s) + 1 for the two.
    Keys: `factor`, `original_max_len`; optional `beta_fast=32`, `beta_slow=1`,
    `attention_factor`, `mscale`, `mscale_all_dim`, `truncate=True`.
  - `llama3`: the Llama 3.1 rule (Dubey et al. 2024, "The Llama 3 Herd of Models", reference code):
    theta_i whose wavelength 2 pi / theta_i exceeds L / low_freq_factor become theta_i / s, those
    whose wavelength is below L / high_freq_factor stay, and in between theta_i * ((1 - a) / s + a)
    with a = (L / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor).
    Keys: `factor`, `original_max_len`; optional `low_freq_factor=1`, `high_freq_factor=4`.

  Each type matches HF transformers' `ROPE_INIT_FUNCTIONS` (`original_max_len` is its
  `original_max_position_embeddings`, or `max_position_embeddings` for `dynamic`). `factor`
  must be >= 1.

  Returns:
    `(inv_freq, attention_scale)`: `attention_scale` is a Python float that multiplies the rotated
    queries and keys (so the logits by its square); it is 1.0 except for YaRN.
  """
  rotary_dim = num_rotary_dims(head_dim, rotary_fraction)
  if isinstance(base, bool) or not isinstance(base, numbers.Real) or base <= 1.0:
    raise ValueError(f"RoPE base must be a number > 1, got {base!r}")
  base = float(base)
  config = check_scaling(scaling)
  attention_scale = 1.0
  scaling_type = None if config is None else config["type"]
  if scaling_type is None:
    inv_freq = _plain_inv_freq(rotary_dim, base)
  elif scaling_type == "linear":
    inv_freq = _plain_inv_freq(rotary_dim, base) / config["factor"]
  elif scaling_type == "ntk":
    inv_freq = _plain_inv_freq(rotary_dim,
                               base * config["factor"] ** _ntk_exponent(rotary_dim, "ntk"))
  elif scaling_type == "dynamic":
    inv_freq = _plain_inv_freq(rotary_dim, _dynamic_base(base, rotary_dim, config, seq_len))
  elif scaling_type == "yarn":
    inv_freq, attention_scale = _yarn(rotary_dim, base, config)
  else:
    inv_freq = _llama3(rotary_dim, base, config)
  return jnp.asarray(inv_freq, jnp.float32), attention_scale


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array, *,
               layout: str = "half", scale=1.0) -> jax.Array:
  """Rotates the first `2 * len(inv_freq)` dims of `x` by angle `position * theta_i`.

  RoPE (Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary Position Embedding"):
  f(x, m) = R_{Theta,m} x, with R block-diagonal in 2x2 rotations by m * theta_i, so
  <f(q, n), f(k, m)> depends on n - m only. For pair (a, b) of dims:
  a' = a cos(m theta_i) - b sin(m theta_i),  b' = b cos(m theta_i) + a sin(m theta_i).

  Args:
    x: `[..., L, H, D]` queries or keys.
    positions: `[..., L]` positions (usually int), broadcastable against x's leading dims.
    inv_freq: float `[R/2]` frequencies `theta_i` (see `rope_frequencies`); R <= D dims rotate and
      the other D - R pass through unchanged (partial rotary).
    layout: which dims form pair i: "half" pairs (i, i + R/2) (GPT-NeoX, Llama, HF
      `rotate_half`); "interleaved" pairs (2i, 2i + 1) (RoFormer, GPT-J).
    scale: multiplies both dims of each rotated pair (not the pass-through dims): a scalar (YaRN's
      attention scale) or per-frequency factors broadcastable to `[..., L, R/2]` (xPos).

  Returns:
    Array like `x`, same dtype. Angles and the rotation are computed in float32; positions are
    exact in float32 only below 2^24.
  """
  if layout not in LAYOUTS:
    raise ValueError(f"unknown RoPE layout {layout!r}; use one of {LAYOUTS}")
  inv_freq = jnp.asarray(inv_freq, jnp.float32)
  if inv_freq.ndim != 1:
    raise ValueError(f"inv_freq must be 1-D [rotary_dim // 2], got shape {inv_freq.shape}")
  half = inv_freq.shape[0]
  rotary_dim = 2 * half
  if x.ndim < 3 or rotary_dim > x.shape[-1]:
    raise ValueError(f"x must be [..., L, H, D] with D >= 2 * len(inv_freq) = {rotary_dim}, got "
                     f"shape {x.shape}")
  positions = jnp.asarray(positions)
  if positions.ndim < 1 or positions.shape[-1] != x.shape[-3]:
    raise ValueError(f"positions {positions.shape} must be [..., L] with L = x.shape[-3] for x "
                     f"of shape {x.shape} ([..., L, H, D])")

  angles_LR = positions.astype(jnp.float32)[..., None] * inv_freq
  scale = jnp.asarray(scale, jnp.float32)
  # Insert the head axis so [..., L, 1, R/2] broadcasts over x's [..., L, H, R/2].
  scale_L1R = scale if scale.ndim == 0 else scale[..., None, :]
  cos_L1R = jnp.cos(angles_LR)[..., None, :] * scale_L1R
  sin_L1R = jnp.sin(angles_LR)[..., None, :] * scale_L1R

  x_rot = x[..., :rotary_dim].astype(jnp.float32)
  if layout == "half":
    a, b = x_rot[..., :half], x_rot[..., half:]
  else:
    a, b = x_rot[..., 0::2], x_rot[..., 1::2]
  a_new = a * cos_L1R - b * sin_L1R
  b_new = b * cos_L1R + a * sin_L1R
  if layout == "half":
    rotated = jnp.concatenate([a_new, b_new], axis=-1)
  else:
    rotated = jnp.stack([a_new, b_new], axis=-1).reshape(a_new.shape[:-1] + (rotary_dim,))
  return jnp.concatenate([rotated.astype(x.dtype), x[..., rotary_dim:]], axis=-1)


def _rotate(x_BLHD: jax.Array, positions_BL: jax.Array, *, is_key: bool, base: float,
            scaling: Optional[Mapping[str, Any]], rotary_fraction: float, layout: str,
            seq_len=None, **_) -> jax.Array:
  """The `rotate` hook: queries and keys get the same rotation and attention scale.

  For dynamic NTK with `seq_len=None`, the current length is `max(positions) + 1` (over the whole
  batch), as HF transformers does at each forward pass; keys already in a KV cache keep the
  frequencies they were rotated with.
  """
  del is_key
  config = check_scaling(scaling)
  if seq_len is None and config is not None and config["type"] == "dynamic":
    seq_len = jnp.max(positions_BL) + 1
  inv_freq, attention_scale = rope_frequencies(
      x_BLHD.shape[-1], base=base, scaling=config, seq_len=seq_len,
      rotary_fraction=rotary_fraction)
  return apply_rope(x_BLHD, positions_BL, inv_freq, layout=layout, scale=attention_scale)


def _check_options(*, base, scaling, rotary_fraction, layout, **_) -> None:
  """The `check` hook: every option value, before anything is traced."""
  check_scaling(scaling)
  if isinstance(base, bool) or not isinstance(base, (int, float)) or base <= 1:
    raise ValueError(f"RoPE base must be a number > 1, got {base!r}")
  if isinstance(rotary_fraction, bool) or not 0 < rotary_fraction <= 1:
    raise ValueError(f"RoPE rotary_fraction must be a number in (0, 1], got {rotary_fraction!r}")
  if layout not in LAYOUTS:
    raise ValueError(f"unknown RoPE layout {layout!r}; use one of {LAYOUTS}")


SCHEMES = (
    Scheme(
        name="rope",
        citation="Su, Lu, Pan, Murtadha, Wen, Liu 2021, RoFormer: Enhanced Transformer with "
                 "Rotary Position Embedding (arXiv:2104.09864)",
        summary="rotates query/key dim pairs by position-proportional angles, so logits depend "
                "on relative position; optional linear/NTK/dynamic/YaRN/Llama-3 scaling",
        defaults={"base": 10000.0, "scaling": None, "rotary_fraction": 1.0, "layout": "half",
                  "seq_len": None},
        rotate=_rotate,
        check=_check_options,
    ),
)
