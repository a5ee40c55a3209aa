"""GPT-2 (Radford et al. 2019) -> posjax decoder with a learned absolute position table.

HF layout: `transformer.wte` / `wpe` tables; per block `ln_1`, `attn.c_attn` (fused q|k|v),
`attn.c_proj`, `ln_2`, `mlp.c_fc`, `mlp.c_proj`; `ln_f`; the head is tied to `wte` (unless
`tie_word_embeddings` is false: then `lm_head`). GPT-2's `Conv1D` layers store weights as
[in, out] (the transpose of `nn.Linear`). Pre-LN, LayerNorm eps `layer_norm_epsilon` (1e-5),
`gelu_new` (tanh approximation), logits scaled by 1/sqrt(head_dim) (unless `scale_attn_weights`
is false) and, with `scale_attn_by_inverse_layer_idx`, also by 1/(i + 1) in block i
(`TransformerConfig.attention_scale_by_layer`). `reorder_and_upcast_attn` only changes how HF
computes in half precision (posjax's attention accumulates in float32 anyway).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from posjax.interop.weights import HFTensors, Params, activation_from_hf, hf_get
from posjax.interop.weights import put_attention, put_linear, put_norm
from posjax.models import TransformerConfig

MODEL_TYPE = "gpt2"
FAMILIES = ("decoder",)
# Old checkpoints store the causal mask and a masking constant as buffers.
IGNORE = (r"(^|\.)attn\.bias$", r"(^|\.)attn\.masked_bias$")


def config_from_hf(hf_config: Mapping[str, Any]) -> TransformerConfig:
  """The posjax `TransformerConfig` of a GPT-2 `config.json` dict."""
  if hf_config.get("add_cross_attention", False):
    raise ValueError("gpt2: add_cross_attention=True is not supported by posjax's decoder")
  dim = hf_get(hf_config, "n_embd", "hidden_size")
  return TransformerConfig(
      vocab_size=hf_get(hf_config, "vocab_size"), dim=dim,
      num_layers=hf_get(hf_config, "n_layer", "num_hidden_layers"),
      num_heads=hf_get(hf_config, "n_head", "num_attention_heads"),
      mlp_dim=hf_get(hf_config, "n_inner", default=4 * dim),
      activation=activation_from_hf(hf_get(hf_config, "activation_function", default="gelu_new"),
                                    gated=False, model_type=MODEL_TYPE),
      norm="layernorm", norm_position="pre",
      norm_eps=hf_get(hf_config, "layer_norm_epsilon", default=1e-5),
      use_bias=True, final_norm=True,
      tie_embeddings=hf_get(hf_config, "tie_word_embeddings", default=True),
      attention_scale=None if hf_config.get("scale_attn_weights", True) else 1.0,
      attention_scale_by_layer=bool(hf_config.get("scale_attn_by_inverse_layer_idx", False)),
      pe="learned", pe_options={"max_len": hf_get(hf_config, "n_positions",
                                                  "max_position_embeddings")})


def convert_weights(state: Mapping[str, np.ndarray], cfg: TransformerConfig,
                    family: str = "decoder") -> Params:
  """posjax parameters `{path: array}` of a GPT-2 state dict (HF names)."""
  if family not in FAMILIES:
    raise ValueError(f"gpt2 converts to the families {FAMILIES}, not {family!r}")
  w = HFTensors(state, model_type=MODEL_TYPE, base_prefix="transformer.", ignore=IGNORE)
  d, f, h = cfg.dim, cfg.resolved_mlp_dim, cfg.num_heads
  params: Params = {}
  tokens = w.take("wte.weight", (cfg.vocab_size, d))
  params[("embedding", "tokens", "embedding")] = tokens
  params[("embedding", "positional", "params", "table")] = w.take(
      "wpe.weight", (cfg.pe_options["max_len"], d))
  if cfg.tie_embeddings:
    w.take_tied("lm_head.weight", tokens)
  else:
    params[("head", "proj", "kernel")] = w.take("lm_head.weight", (cfg.vocab_size, d)).T
  for i in range(cfg.num_layers):
    src, dst = f"h.{i}.", ("decoder", "blocks", i)
    put_norm(params, dst + ("attention_norm",), w.take(src + "ln_1.weight", (d,)),
             w.take(src + "ln_1.bias", (d,)))
    qkv_DX, qkv_bias = w.take(src + "attn.c_attn.weight", (d, 3 * d)), w.take(
        src + "attn.c_attn.bias", (3 * d,))
    q, k, v = np.split(qkv_DX, 3, axis=1)
    qb, kb, vb = np.split(qkv_bias, 3)
    put_attention(params, dst + ("attention",), num_heads=h, num_kv_heads=h,
                  head_dim=cfg.resolved_head_dim, q_DX=q, k_DX=k, v_DX=v,
                  o_XD=w.take(src + "attn.c_proj.weight", (d, d)), q_bias=qb, k_bias=kb,
                  v_bias=vb, o_bias=w.take(src + "attn.c_proj.bias", (d,)))
    put_norm(params, dst + ("mlp_norm",), w.take(src + "ln_2.weight", (d,)),
             w.take(src + "ln_2.bias", (d,)))
    put_linear(params, dst + ("mlp", "wi"), w.take(src + "mlp.c_fc.weight", (d, f)),
               w.take(src + "mlp.c_fc.bias", (f,)))
    put_linear(params, dst + ("mlp", "wo"), w.take(src + "mlp.c_proj.weight", (f, d)),
               w.take(src + "mlp.c_proj.bias", (d,)))
  put_norm(params, ("decoder", "final_norm"), w.take("ln_f.weight", (d,)),
           w.take("ln_f.bias", (d,)))
  w.finish()
  return params
