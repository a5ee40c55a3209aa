"""Parameter-efficient fine-tuning: which parameters train, and the modules some methods add.

Methods (`PeftConfig.method`); the task head (and its representation layer) always trains:
- `full`: every parameter.
- `freeze_embeddings`: all but the token embedding and an input positional table.
- `freeze_bottom`: all but the embeddings and the bottom `freeze_layers` blocks.
- `lora` (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"): each target
  projection W becomes `x W + (α / r) · x A B`, A `[in, r]` random, B `[r, out]` zeros; only A and B
  train. Targets by name: query, key, value, out (attention), wi, wg, wo (MLP).
- `adapters` (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP"): after the
  attention and the MLP sublayer of every block, `h + W_up σ(W_down h)` with a bottleneck of
  `adapter_dim` and W_up zero; only the adapters train.
- `bitfit` (Ben Zaken et al. 2022): only the bias terms (of projections and norms).
- `prompt` (Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning"):
  `prompt_length` learned vectors prepended to the encoder's input, initialised from the
  embeddings of random vocabulary tokens; only they train.

LoRA and adapters start as the identity: at initialisation the model computes exactly what the
pretrained one does. A LoRA-wrapped projection keeps its pretrained weights under `.../base/...`;
`pretrained_path` maps such a path back to the plain model's, for loading a checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from posjax.nn.attention import Attention
from posjax.nn.block import Block
from posjax.nn.mlp import ACTIVATIONS, MLP

METHODS = ("full", "freeze_embeddings", "freeze_bottom", "lora", "adapters", "bitfit", "prompt")
LORA_TARGETS = {Attention: ("query", "key", "value", "out"), MLP: ("wi", "wg", "wo")}
_WRAPPER = "base"      # the attribute under which LoRA keeps the pretrained projection
_ADAPTERS = ("attention_adapter", "mlp_adapter")


@dataclasses.dataclass(frozen=True)
class PeftConfig:
  method: str = "full"
  freeze_layers: int = 0             # freeze_bottom: blocks frozen, counted from the input
  lora_rank: int = 8
  lora_alpha: float = 16.0
  lora_targets: tuple[str, ...] = ("query", "value")
  adapter_dim: int = 16
  prompt_length: int = 16
  freeze_token_embedding: bool = False  # besides the method: the token table never trains
                                        # (set by model.freeze_word_vectors)

  @classmethod
  def from_config(cls, config) -> "PeftConfig":
    """From `config.peft` (a ConfigDict or dict; `lora_targets` may be comma-separated text)."""
    values = dict(config.to_dict() if hasattr(config, "to_dict") else (config or {}))
    unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f"unknown peft fields {sorted(unknown)}; known: "
                       f"{[f.name for f in dataclasses.fields(cls)]}")
    targets = values.get("lora_targets", cls.lora_targets)
    if isinstance(targets, str):
      targets = tuple(t.strip() for t in targets.split(",") if t.strip())
    values["lora_targets"] = tuple(targets)
    return cls(**values)

  def validate(self, num_layers: int) -> None:
    problems = []
    if self.method not in METHODS:
      problems.append(f"peft.method={self.method!r}: choose one of {METHODS}")
    if self.method == "freeze_bottom" and not 0 < self.freeze_layers <= num_layers:
      problems.append(f"peft.freeze_layers={self.freeze_layers} must be in 1..{num_layers} "
                      "(the model's layers) for freeze_bottom")
    known = sorted({t for names in LORA_TARGETS.values() for t in names})
    if self.method == "lora":
      if self.lora_rank < 1:
        problems.append(f"peft.lora_rank={self.lora_rank} must be positive")
      bad = [t for t in self.lora_targets if t not in known]
      if bad or not self.lora_targets:
        problems.append(f"peft.lora_targets={','.join(self.lora_targets)}: choose among {known}")
    if self.method == "adapters" and self.adapter_dim < 1:
      problems.append(f"peft.adapter_dim={self.adapter_dim} must be positive")
    if self.method == "prompt" and self.prompt_length < 1:
      problems.append(f"peft.prompt_length={self.prompt_length} must be positive")
    if problems:
      raise ValueError("invalid peft config:\n  - " + "\n  - ".join(problems))


class LoRA(nnx.Module):
  """A projection plus a low-rank update: `base(x) + (α / r) · (x A) B` (B starts at zero)."""

  def __init__(self, base: nnx.Module, *, rank: int, alpha: float, rngs: nnx.Rngs):
    self.base = base
    in_shape, out_shape = _feature_shapes(base)
    self.in_shape, self.out_shape, self.scale = in_shape, out_shape, alpha / rank
    fan_in = math.prod(in_shape)
    self.lora_a = nnx.LoRAParam(jax.random.normal(rngs.params(), (fan_in, rank)) / math.sqrt(fan_in))
    self.lora_b = nnx.LoRAParam(jnp.zeros((rank, math.prod(out_shape))))

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.base(x)
    lead = x.shape[:x.ndim - len(self.in_shape)]
    h = x.reshape(lead + (-1,)) @ self.lora_a[...].astype(x.dtype)
    delta = (h @ self.lora_b[...].astype(x.dtype)).reshape(lead + self.out_shape)
    return y + (self.scale * delta).astype(y.dtype)


def _feature_shapes(base) -> tuple[tuple[int, ...], tuple[int, ...]]:
  if not isinstance(base, (nnx.Linear, nnx.LinearGeneral)):
    raise TypeError(f"LoRA wraps nnx.Linear or nnx.LinearGeneral, not {type(base).__name__}")
  as_tuple = lambda v: tuple(int(d) for d in np.atleast_1d(v))
  return as_tuple(base.in_features), as_tuple(base.out_features)


class Adapter(nnx.Module):
  """Houlsby's bottleneck: `h + W_up σ(W_down h + b_down) + b_up`, W_up and b_up zero."""

  def __init__(self, dim: int, bottleneck: int, *, activation: str = "gelu", dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.down = nnx.Linear(dim, bottleneck, dtype=dtype, rngs=rngs,
                           kernel_init=nnx.initializers.normal(1e-2))
    self.up = nnx.Linear(bottleneck, dim, dtype=dtype, rngs=rngs,
                         kernel_init=nnx.initializers.zeros_init())
    self.activation = activation

  def __call__(self, h: jax.Array) -> jax.Array:
    return h + self.up(ACTIVATIONS[self.activation](self.down(h))).astype(h.dtype)


class SoftPrompt(nnx.Module):
  """`length` learned input vectors prepended to a sequence (positions 0..P-1, the text after)."""

  def __init__(self, init_vectors_PD: jax.Array):
    self.length = int(init_vectors_PD.shape[0])
    self.embedding = nnx.Param(jnp.asarray(init_vectors_PD, jnp.float32))

  def prepend(self, x_BLD, positions_BL, segment_ids_BL):
    """The prompt before each row; its segment is the row's first token's (one example a row)."""
    batch = x_BLD.shape[0]
    prompt = jnp.broadcast_to(self.embedding[...].astype(x_BLD.dtype),
                              (batch,) + self.embedding.shape)
    x = jnp.concatenate([prompt, x_BLD], axis=1)
    prompt_pos = jnp.broadcast_to(jnp.arange(self.length, dtype=positions_BL.dtype),
                                  (batch, self.length))
    positions = jnp.concatenate([prompt_pos, positions_BL], axis=1)
    if segment_ids_BL is not None:
      first = jnp.broadcast_to(segment_ids_BL[:, :1], (batch, self.length))
      segment_ids_BL = jnp.concatenate([first, segment_ids_BL], axis=1)
    return x, positions, segment_ids_BL


def apply(model: nnx.Module, peft: PeftConfig, *, seed: int = 0) -> nnx.Module:
  """Add the modules `peft.method` needs to `model` (in place; returns it)."""
  rngs = nnx.Rngs(params=seed + 7919)
  if peft.method == "lora":
    for _, module in list(nnx.iter_modules(model)):
      for kind, names in LORA_TARGETS.items():
        if isinstance(module, kind):
          for name in names:
            if name in peft.lora_targets and getattr(module, name, None) is not None:
              setattr(module, name, LoRA(getattr(module, name), rank=peft.lora_rank,
                                         alpha=peft.lora_alpha, rngs=rngs))
  elif peft.method == "adapters":
    for _, module in list(nnx.iter_modules(model)):
      if isinstance(module, Block):
        dim = module.mlp.wo.out_features
        for name in _ADAPTERS:
          setattr(module, name, Adapter(dim, peft.adapter_dim, dtype=module.mlp.wo.dtype,
                                        rngs=rngs))
  elif peft.method == "prompt":
    encoder = getattr(model, "encoder", None)
    if encoder is None or not hasattr(encoder, "prompt"):
      raise ValueError("peft.method=prompt prepends to an encoder's input: use an encoder model "
                       "(task classify or tag)")
    table = encoder.embedding.tokens.embedding[...]
    ids = jax.random.randint(rngs.params(), (peft.prompt_length,), 3, table.shape[0])
    encoder.prompt = SoftPrompt(table[ids] * encoder.embedding.scale)
  return model


def _names(path) -> list[str]:
  return [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]


def pretrained_path(path: Sequence[str]) -> tuple[str, ...]:
  """A parameter's path in the model without PEFT modules (drops LoRA's `base`)."""
  return tuple(name for name in path if name != _WRAPPER)


def is_added(names: Sequence[str]) -> bool:
  """Whether the parameter at `names` belongs to a module PEFT added (no pretrained value)."""
  return names[-1] in ("lora_a", "lora_b") or any(n in names for n in _ADAPTERS + ("prompt",))


def _block_index(names: list[str]):
  if "blocks" in names:
    i = names.index("blocks")
    if i + 1 < len(names) and names[i + 1].isdigit():
      return int(names[i + 1])
  return None


def is_trainable(names: Sequence[str], peft: PeftConfig) -> bool:
  """Whether the parameter at `names` (its path) trains under `peft.method`."""
  names = list(names)
  if names and names[0] == "head":
    return True
  if peft.freeze_token_embedding and names[-2:] == ["tokens", "embedding"]:
    return False
  embedding = "embedding" in names[:-1] or "input_positional" in names
  method = peft.method
  if method == "full":
    return True
  if method == "freeze_embeddings":
    return not embedding
  if method == "freeze_bottom":
    block = _block_index(names)
    return not embedding and (block is None or block >= peft.freeze_layers)
  if method == "lora":
    return names[-1] in ("lora_a", "lora_b")
  if method == "adapters":
    return any(a in names for a in _ADAPTERS)
  if method == "bitfit":
    return names[-1] == "bias"
  if method == "prompt":
    return "prompt" in names
  raise ValueError(f"peft.method={method!r}: choose one of {METHODS}")


def trainable_mask(params: Any, peft: PeftConfig) -> Any:
  """A tree of bools like `params` (a pure dict): True where the parameter trains."""
  return jax.tree_util.tree_map_with_path(lambda p, _: is_trainable(_names(p), peft), params)


def count(params: Any, mask: Any) -> tuple[int, int]:
  """`(trainable, total)` parameter counts."""
  sizes = jax.tree.leaves(jax.tree.map(lambda x: int(np.prod(x.shape)), params))
  flags = jax.tree.leaves(mask)
  return sum(s for s, f in zip(sizes, flags) if f), sum(sizes)
