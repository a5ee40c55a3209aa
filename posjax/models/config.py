"""`TransformerConfig`: every architectural choice of the three model families, checked early."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import jax.numpy as jnp

from posjax import encodings
from posjax.nn.attention_core import BACKENDS, BACKENDS_WITHOUT_PROBS
from posjax.nn.mlp import check_activation
from posjax.nn.positional import value_term

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
POSITIONS = ("from_first_token", "columns")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Architecture of a decoder, encoder or encoder-decoder Transformer."""

  vocab_size: int = 256
  dim: int = 256                      # model width
  num_layers: int = 4                 # per stack (encoder and decoder each, for encoder-decoder)
  num_decoder_layers: Optional[int] = None  # encoder-decoder only; None: same as num_layers
  num_heads: int = 4
  num_kv_heads: Optional[int] = None  # grouped-query attention; None: as many as num_heads
  head_dim: Optional[int] = None      # None: dim // num_heads
  mlp_dim: Optional[int] = None       # None: 4 * dim
  activation: str = "gelu"            # gelu, gelu_tanh, relu, silu, swiglu, geglu, reglu
  norm: str = "layernorm"             # layernorm or rmsnorm
  norm_position: str = "pre"          # pre (GPT-2, Llama, T5) or post (original, BERT)
  norm_eps: float = 1e-6
  use_bias: bool = True               # biases in attention and MLP projections
  qkv_bias: Optional[bool] = None     # on the q, k, v projections only; None: use_bias
  out_bias: Optional[bool] = None     # on the attention output projection; None: use_bias
  mlp_bias: Optional[bool] = None     # on the MLP projections; None: use_bias (Llama's
                                      # attention_bias / mlp_bias; Qwen2: q, k, v only)
  final_norm: bool = True             # a norm after the last block (pre-norm models)
  embed_norm: bool = False            # a norm right after the input embedding (BERT, BLOOM)
  embed_scale: float = 1.0            # token embeddings times this before the positional term is
                                      # added; 0 means √dim (Vaswani et al. 2017), which keeps
                                      # tokens and a sinusoidal term of comparable size
  num_token_types: int = 0            # BERT's segment (token type) embeddings; 0: none
  dropout: float = 0.0
  tie_embeddings: bool = True         # output projection shares the token embedding
  tied_output_scale: float = 1.0      # hidden states times this before a tied head (T5: dim^-0.5)
  attention_scale: Optional[float] = None  # logits scale; None: 1/sqrt(head_dim) (T5: 1.0)
  attention_scale_by_layer: bool = False  # also divide layer i's logits by i + 1 (GPT-2's
                                      # scale_attn_by_inverse_layer_idx, Mistral's GPT-2 runs)
  positions: str = "from_first_token"  # positions when the caller passes none: from_first_token
                                      # (0 at each segment's first token: packed rows, left
                                      # padding) or columns (0..L-1 whatever the padding, as HF
                                      # BERT and a plain GPT-2 forward)
  pe: str = "rope"                    # positional scheme, by name (posjax.encodings.names())
  pe_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  pe_shared: bool = False             # one positional module for all layers (T5) or one each
  attention_backend: str = "auto"     # auto, xla, chunked, cudnn, fused
  chunk_size: int = 512               # queries per block for the chunked backend
  remat: bool = False                 # rematerialize each block in the backward pass
  dtype: str = "float32"              # compute dtype
  param_dtype: str = "float32"

  def __post_init__(self):
    object.__setattr__(self, "pe_options", dict(self.pe_options))
    self.validate()

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "TransformerConfig":
    """From a `ConfigDict` (or dict); an unknown field is an error naming the known ones."""
    values = dict(values.to_dict() if hasattr(values, "to_dict") else values)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"unknown model config field(s) {unknown}; known: {sorted(known)}")
    return cls(**values)

  def replace(self, **changes) -> "TransformerConfig":
    return dataclasses.replace(self, **changes)

  @property
  def resolved_head_dim(self) -> int:
    return self.head_dim or self.dim // self.num_heads

  @property
  def resolved_qkv_bias(self) -> bool:
    return self.use_bias if self.qkv_bias is None else self.qkv_bias

  @property
  def resolved_out_bias(self) -> bool:
    return self.use_bias if self.out_bias is None else self.out_bias

  @property
  def resolved_mlp_bias(self) -> bool:
    return self.use_bias if self.mlp_bias is None else self.mlp_bias

  def layer_attention_scale(self, layer: int) -> Optional[float]:
    """The logits scale of block `layer` (0-based); None: attention's 1/sqrt(head_dim)."""
    if not self.attention_scale_by_layer:
      return self.attention_scale
    base = (self.attention_scale if self.attention_scale is not None
            else self.resolved_head_dim**-0.5)
    return base / (layer + 1)

  @property
  def resolved_mlp_dim(self) -> int:
    return self.mlp_dim or 4 * self.dim

  @property
  def resolved_embed_scale(self) -> float:
    return self.embed_scale or self.dim**0.5

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  @property
  def params_dtype(self):
    return DTYPES[self.param_dtype]

  def validate(self) -> None:
    """Raise ValueError with what is wrong and what to do; runs before anything is compiled."""
    problems = []
    if self.head_dim is None and self.dim % self.num_heads:
      problems.append(f"num_heads={self.num_heads} does not divide dim={self.dim}: change one, "
                      "or set head_dim explicitly")
    kv = self.num_kv_heads or self.num_heads
    if self.num_heads % kv:
      problems.append(f"num_kv_heads={kv} must divide num_heads={self.num_heads}")
    if self.norm not in ("layernorm", "rmsnorm"):
      problems.append(f"norm={self.norm!r}: choose layernorm or rmsnorm")
    if self.norm_position not in ("pre", "post"):
      problems.append(f"norm_position={self.norm_position!r}: choose pre or post")
    if self.positions not in POSITIONS:
      problems.append(f"positions={self.positions!r}: choose one of {POSITIONS}")
    if self.attention_backend not in BACKENDS:
      problems.append(f"attention_backend={self.attention_backend!r}: choose one of {BACKENDS}")
    for field in ("dtype", "param_dtype"):
      if getattr(self, field) not in DTYPES:
        problems.append(f"{field}={getattr(self, field)!r}: choose one of {sorted(DTYPES)}")
    if not 0 <= self.dropout < 1:
      problems.append(f"dropout={self.dropout} must be in [0, 1)")
    if self.embed_scale < 0:
      problems.append(f"embed_scale={self.embed_scale} must be positive (0 means √dim)")
    for field in ("vocab_size", "dim", "num_layers", "num_heads"):
      if getattr(self, field) <= 0:
        problems.append(f"{field} must be positive, got {getattr(self, field)}")
    try:
      check_activation(self.activation)
    except ValueError as e:
      problems.append(str(e))
    try:
      scheme = encodings.get(self.pe)
      options = scheme.options(**self.pe_options)
    except ValueError as e:
      problems.append(str(e))
    else:
      if (value_term(self.pe, options) is not None
          and self.attention_backend in BACKENDS_WITHOUT_PROBS):
        problems.append(f"{self.pe} with values=True adds a term computed from the attention "
                        f"probabilities, which attention_backend={self.attention_backend!r} never "
                        "forms: use xla, chunked or auto, or values=False")
      if "rotate" in scheme.hooks and self.resolved_head_dim % 2:
        problems.append(f"{self.pe} rotates pairs of dimensions: head_dim="
                        f"{self.resolved_head_dim} must be even")
    if problems:
      raise ValueError("invalid model config:\n  - " + "\n  - ".join(problems))
