"""Llama (Touvron et al. 2023; Llama 3: Dubey et al. 2024) -> posjax decoder with RoPE.

HF layout: `model.embed_tokens`; per layer `input_layernorm`, `self_attn.{q,k,v,o}_proj`,
`post_attention_layernorm`, `mlp.{gate,up,down}_proj`; `model.norm`; `lm_head` (or tied).
RMSNorm (eps `rms_norm_eps`), SwiGLU, grouped-query attention, no biases by default
(`attention_bias`: q, k, v, o; `mlp_bias`: the MLP; independent), RoPE in the "half" layout (HF
permutes Meta's interleaved q/k weights to it when converting).

RoPE settings: `rope_theta` is the base; the scaling (`rope_parameters` in transformers 5,
`rope_scaling` before) maps to the rope scheme's `scaling` dict, whose types follow HF's
`ROPE_INIT_FUNCTIONS` (see `posjax.encodings.rope`).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from posjax.encodings import rope as rope_lib
from posjax.interop.weights import HFTensors, Params, activation_from_hf, hf_get
from posjax.interop.weights import put_attention, put_linear, put_norm
from posjax.models import TransformerConfig

MODEL_TYPE = "llama"
FAMILIES = ("decoder",)
IGNORE = (r"rotary_emb\.inv_freq$",)  # a buffer in old checkpoints, recomputed from the config
ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3")


def _rope_parameters(hf_config: Mapping[str, Any]) -> dict[str, Any]:
  """HF's RoPE settings in the transformers 5 form: one flat dict with `rope_type`, `rope_theta`."""
  values = dict(hf_config.get("rope_parameters") or hf_config.get("rope_scaling") or {})
  if any(isinstance(v, Mapping) for v in values.values()):
    raise ValueError(f"{hf_config.get('model_type')}: per-layer-type RoPE parameters "
                     f"({sorted(values)}) are not supported")
  values.setdefault("rope_type", values.pop("type", "default"))
  values.pop("type", None)
  values.setdefault("rope_theta", hf_config.get("rope_theta", 10000.0))
  if hf_config.get("partial_rotary_factor") is not None:
    values.setdefault("partial_rotary_factor", hf_config["partial_rotary_factor"])
  return values


def rope_options_from_hf(hf_config: Mapping[str, Any]) -> dict[str, Any]:
  """The posjax `rope` scheme options (base, scaling, rotary_fraction, layout) of an HF config.

  `rope_type` default -> no scaling; linear -> {factor}; dynamic -> {factor, original_max_len =
  max_position_embeddings} (HF grows the base past that length); yarn -> {factor,
  original_max_len = original_max_position_embeddings (top-level, then in the dict, then
  max_position_embeddings), beta_fast, beta_slow, attention_factor, mscale, mscale_all_dim,
  truncate}, with factor = max_position_embeddings / original when unset, as HF does; llama3 ->
  {factor, original_max_len, low_freq_factor, high_freq_factor}. Other types raise ValueError.
  """
  rope = _rope_parameters(hf_config)
  rope_type = rope["rope_type"]
  if rope_type not in ROPE_TYPES:
    raise ValueError(f"{hf_config.get('model_type')}: RoPE type {rope_type!r} is not supported; "
                     f"posjax's rope scheme has {ROPE_TYPES}")
  max_len = hf_config.get("max_position_embeddings")
  original = (hf_config.get("original_max_position_embeddings")
              or rope.get("original_max_position_embeddings") or max_len)
  scaling: Optional[dict[str, Any]] = None
  if rope_type == "linear":
    scaling = {"type": "linear", "factor": rope["factor"]}
  elif rope_type == "dynamic":
    scaling = {"type": "dynamic", "factor": rope["factor"], "original_max_len": max_len}
  elif rope_type == "yarn":
    factor = rope.get("factor") or max_len / original
    scaling = {"type": "yarn", "factor": factor, "original_max_len": original,
               "beta_fast": rope.get("beta_fast") or 32.0,
               "beta_slow": rope.get("beta_slow") or 1.0,
               "truncate": rope.get("truncate", True)}
    for key in ("attention_factor", "mscale", "mscale_all_dim"):
      if rope.get(key) is not None:
        scaling[key] = rope[key]
  elif rope_type == "llama3":
    scaling = {"type": "llama3", "factor": rope["factor"], "original_max_len": original,
               "low_freq_factor": rope.get("low_freq_factor", 1.0),
               "high_freq_factor": rope.get("high_freq_factor", 4.0)}
  if scaling is not None and scaling.get("original_max_len", 1) is None:
    raise ValueError(f"{hf_config.get('model_type')}: RoPE type {rope_type!r} needs "
                     "max_position_embeddings (or original_max_position_embeddings)")
  rope_lib.check_scaling(scaling)  # an invalid value fails here, not at the first forward pass
  return {"base": float(rope["rope_theta"]), "scaling": scaling,
          "rotary_fraction": float(rope.get("partial_rotary_factor", 1.0)), "layout": "half"}


def config_from_hf(hf_config: Mapping[str, Any]) -> TransformerConfig:
  """The posjax `TransformerConfig` of a Llama `config.json` dict.

  Biases: `attention_bias` puts them on q, k, v and o, `mlp_bias` on gate, up and down, each
  independently (HF's `LlamaAttention` / `LlamaMLP`).
  """
  attention_bias = bool(hf_config.get("attention_bias", False))
  return llama_config(hf_config, qkv_bias=attention_bias, out_bias=attention_bias,
                      mlp_bias=bool(hf_config.get("mlp_bias", False)))


def llama_config(hf_config: Mapping[str, Any], *, qkv_bias: bool, out_bias: bool,
                 mlp_bias: bool) -> TransformerConfig:
  """The `TransformerConfig` of a Llama-layout `config.json` dict with these biases (shared by
  the architectures with Llama's layout, e.g. `posjax.interop.qwen2`)."""
  model_type = hf_config.get("model_type", MODEL_TYPE)
  dim = hf_get(hf_config, "hidden_size")
  heads = hf_get(hf_config, "num_attention_heads")
  return TransformerConfig(
      vocab_size=hf_get(hf_config, "vocab_size"), dim=dim,
      num_layers=hf_get(hf_config, "num_hidden_layers"), num_heads=heads,
      num_kv_heads=hf_get(hf_config, "num_key_value_heads", default=heads),
      head_dim=hf_get(hf_config, "head_dim", default=dim // heads),
      mlp_dim=hf_get(hf_config, "intermediate_size"),
      activation=activation_from_hf(hf_get(hf_config, "hidden_act", default="silu"), gated=True,
                                    model_type=model_type),
      norm="rmsnorm", norm_position="pre", norm_eps=hf_get(hf_config, "rms_norm_eps",
                                                            default=1e-6),
      use_bias=False, qkv_bias=qkv_bias, out_bias=out_bias, mlp_bias=mlp_bias, final_norm=True,
      tie_embeddings=bool(hf_config.get("tie_word_embeddings", False)),
      pe="rope", pe_options=rope_options_from_hf(hf_config))


def convert_weights(state: Mapping[str, np.ndarray], cfg: TransformerConfig,
                    family: str = "decoder", *, model_type: str = MODEL_TYPE) -> Params:
  """posjax parameters `{path: array}` of a Llama-layout state dict (HF names); the biases
  taken are those `cfg` has (`resolved_qkv_bias`, `resolved_out_bias`, `resolved_mlp_bias`)."""
  if family not in FAMILIES:
    raise ValueError(f"{model_type} converts to the families {FAMILIES}, not {family!r}")
  w = HFTensors(state, model_type=model_type, base_prefix="model.", ignore=IGNORE)
  d, f, dh = cfg.dim, cfg.resolved_mlp_dim, cfg.resolved_head_dim
  h, g = cfg.num_heads, cfg.num_kv_heads or cfg.num_heads
  params: Params = {}
  tokens = w.take("embed_tokens.weight", (cfg.vocab_size, d))
  params[("embedding", "tokens", "embedding")] = tokens
  if cfg.tie_embeddings:
    w.take_tied("lm_head.weight", tokens)
  else:
    params[("head", "proj", "kernel")] = w.take("lm_head.weight", (cfg.vocab_size, d)).T

  def linear(name, out_features, in_features, bias):
    weight = w.take(name + ".weight", (out_features, in_features)).T
    return weight, (w.take(name + ".bias", (out_features,)) if bias else None)

  qkv, out, mlp = cfg.resolved_qkv_bias, cfg.resolved_out_bias, cfg.resolved_mlp_bias

  for i in range(cfg.num_layers):
    src, dst = f"layers.{i}.", ("decoder", "blocks", i)
    put_norm(params, dst + ("attention_norm",), w.take(src + "input_layernorm.weight", (d,)))
    (q, qb), (k, kb), (v, vb), (o, ob) = (
        linear(src + "self_attn.q_proj", h * dh, d, qkv),
        linear(src + "self_attn.k_proj", g * dh, d, qkv),
        linear(src + "self_attn.v_proj", g * dh, d, qkv),
        linear(src + "self_attn.o_proj", d, h * dh, out))
    put_attention(params, dst + ("attention",), num_heads=h, num_kv_heads=g, head_dim=dh,
                  q_DX=q, k_DX=k, v_DX=v, o_XD=o, q_bias=qb, k_bias=kb, v_bias=vb, o_bias=ob)
    put_norm(params, dst + ("mlp_norm",), w.take(src + "post_attention_layernorm.weight", (d,)))
    put_linear(params, dst + ("mlp", "wg"), *linear(src + "mlp.gate_proj", f, d, mlp))
    put_linear(params, dst + ("mlp", "wi"), *linear(src + "mlp.up_proj", f, d, mlp))
    put_linear(params, dst + ("mlp", "wo"), *linear(src + "mlp.down_proj", d, f, mlp))
  put_norm(params, ("decoder", "final_norm"), w.take("norm.weight", (d,)))
  w.finish()
  return params
