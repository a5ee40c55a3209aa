"""T5 (Raffel et al. 2020) and T5 v1.1 -> posjax encoder-decoder with T5 relative buckets.

HF layout: `shared` token table (copies as `encoder.embed_tokens`, `decoder.embed_tokens`);
encoder blocks `layer.0` = `SelfAttention.{q,k,v,o}` + `layer_norm`, `layer.1` =
`DenseReluDense` + `layer_norm`; decoder blocks add `layer.1.EncDecAttention` (so their MLP is
`layer.2`); `final_layer_norm` per stack; `lm_head`. The bucket table
`SelfAttention.relative_attention_bias` [num_buckets, heads] lives in block 0 and serves every
block of its stack: posjax `pe="t5"` with `pe_shared=True`, one table per stack (bidirectional in
the encoder, causal in the decoder). An odd `relative_attention_num_buckets` is fine: the encoder
then uses floor(n / 2) buckets a direction, as HF does, and never reads the table's last row.
No 1/sqrt(d) in attention (`attention_scale=1.0`), RMSNorm without bias (eps
`layer_norm_epsilon`), pre-norm, no biases anywhere.

MLP: `feed_forward_proj` "relu" (T5) -> relu; "gated-gelu" (v1.1) -> geglu, gelu_new on `wi_0`
times `wi_1` (posjax `wg` and `wi`); other "gated-<act>" and plain activations map likewise.

Head: transformers 4.x ties the head to `shared` and scales the decoder output by d_model^-0.5
exactly when `tie_word_embeddings` (T5: true; v1.1: false, with its own `lm_head`);
transformers 5 always ties and records the scaling as `scale_decoder_outputs`. Both are read.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from posjax.encodings import t5 as t5_buckets
from posjax.interop.weights import HFTensors, Params, activation_from_hf, hf_get
from posjax.interop.weights import put_attention, put_linear, put_norm
from posjax.models import TransformerConfig

MODEL_TYPE = "t5"
FAMILIES = ("encoder_decoder", "encoder")
# HF lists this table as unexpected in its own checkpoints: cross-attention has no position bias.
IGNORE = (r"^decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight$",)


def default_family(hf_config: Mapping[str, Any]) -> str:
  if (hf_config.get("architectures") or [""])[0] == "T5EncoderModel":
    return "encoder"
  return "encoder_decoder"


def head_options(hf_config: Mapping[str, Any], family: str) -> dict[str, Any]:
  del hf_config, family
  return {}


def _activation(feed_forward_proj: str) -> str:
  parts = feed_forward_proj.split("-")
  if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
    raise ValueError(f"t5: feed_forward_proj={feed_forward_proj!r} is not 'gated-<act>' or "
                     "'<act>'")
  gated = len(parts) == 2
  name = "gelu_new" if feed_forward_proj == "gated-gelu" else parts[-1]
  return activation_from_hf(name, gated=gated, model_type=MODEL_TYPE)


def config_from_hf(hf_config: Mapping[str, Any]) -> TransformerConfig:
  """The posjax `TransformerConfig` of a T5 `config.json` dict (4.x or 5.x)."""
  dim = hf_get(hf_config, "d_model")
  tied = bool(hf_config.get("tie_word_embeddings", True))
  scaled = bool(hf_config.get("scale_decoder_outputs", tied))
  if scaled and not tied:
    raise ValueError("t5: an untied head with scaled decoder outputs has no posjax equivalent")
  num_layers = hf_get(hf_config, "num_layers")
  buckets = {"num_buckets": hf_get(hf_config, "relative_attention_num_buckets", default=32),
             "max_distance": hf_get(hf_config, "relative_attention_max_distance", default=128)}
  for bidirectional in (True, False):  # the encoder's buckets, then the decoder's: fail at load
    t5_buckets.t5_check(bidirectional=bidirectional, **buckets)
  return TransformerConfig(
      vocab_size=hf_get(hf_config, "vocab_size"), dim=dim, num_layers=num_layers,
      num_decoder_layers=hf_get(hf_config, "num_decoder_layers", default=num_layers),
      num_heads=hf_get(hf_config, "num_heads"), head_dim=hf_get(hf_config, "d_kv"),
      mlp_dim=hf_get(hf_config, "d_ff"),
      activation=_activation(hf_get(hf_config, "feed_forward_proj", default="relu")),
      norm="rmsnorm", norm_position="pre",
      norm_eps=hf_get(hf_config, "layer_norm_epsilon", default=1e-6), use_bias=False,
      final_norm=True, tie_embeddings=tied, tied_output_scale=dim**-0.5 if scaled else 1.0,
      attention_scale=1.0, pe="t5", pe_shared=True,
      pe_options=buckets)


def _stack(w: HFTensors, params: Params, cfg: TransformerConfig, *, src: str, dst: tuple,
           num_layers: int, decoder: bool) -> None:
  d, f, dh, h = cfg.dim, cfg.resolved_mlp_dim, cfg.resolved_head_dim, cfg.num_heads
  gated = cfg.activation in ("geglu", "swiglu", "reglu")

  def attention(name, path):
    put_attention(params, path, num_heads=h, num_kv_heads=h, head_dim=dh,
                  q_DX=w.take(name + ".q.weight", (h * dh, d)).T,
                  k_DX=w.take(name + ".k.weight", (h * dh, d)).T,
                  v_DX=w.take(name + ".v.weight", (h * dh, d)).T,
                  o_XD=w.take(name + ".o.weight", (d, h * dh)).T)

  for i in range(num_layers):
    block, out = f"{src}.block.{i}.layer.", dst + ("blocks", i)
    attention(block + "0.SelfAttention", out + ("attention",))
    put_norm(params, out + ("attention_norm",), w.take(block + "0.layer_norm.weight", (d,)))
    if i == 0:
      params[out + ("attention", "positional", "params", "table")] = w.take(
          block + "0.SelfAttention.relative_attention_bias.weight",
          (cfg.pe_options["num_buckets"], h))
    mlp = block + "1."
    if decoder:
      attention(block + "1.EncDecAttention", out + ("cross_attention",))
      put_norm(params, out + ("cross_norm",), w.take(block + "1.layer_norm.weight", (d,)))
      mlp = block + "2."
    put_norm(params, out + ("mlp_norm",), w.take(mlp + "layer_norm.weight", (d,)))
    if gated:
      put_linear(params, out + ("mlp", "wg"), w.take(mlp + "DenseReluDense.wi_0.weight", (f, d)).T)
      put_linear(params, out + ("mlp", "wi"), w.take(mlp + "DenseReluDense.wi_1.weight", (f, d)).T)
    else:
      put_linear(params, out + ("mlp", "wi"), w.take(mlp + "DenseReluDense.wi.weight", (f, d)).T)
    put_linear(params, out + ("mlp", "wo"), w.take(mlp + "DenseReluDense.wo.weight", (d, f)).T)
  put_norm(params, dst + ("final_norm",), w.take(f"{src}.final_layer_norm.weight", (d,)))


def convert_weights(state: Mapping[str, np.ndarray], cfg: TransformerConfig,
                    family: str = "encoder_decoder") -> Params:
  """posjax parameters `{path: array}` of a T5 state dict (HF names) for `family`."""
  if family not in FAMILIES:
    raise ValueError(f"t5 converts to the families {FAMILIES}, not {family!r}")
  w = HFTensors(state, model_type=MODEL_TYPE, ignore=IGNORE)
  d = cfg.dim
  params: Params = {}
  if "shared.weight" in w:
    tokens = w.take("shared.weight", (cfg.vocab_size, d))
    w.take_tied("encoder.embed_tokens.weight", tokens)
  else:  # T5EncoderModel checkpoints may keep only the encoder's copy
    tokens = w.take("encoder.embed_tokens.weight", (cfg.vocab_size, d))
  if family == "encoder":
    params[("embedding", "tokens", "embedding")] = tokens
    _stack(w, params, cfg, src="encoder", dst=("stack",), num_layers=cfg.num_layers,
           decoder=False)
    w.drop("decoder.")
    w.drop("lm_head.")
  else:
    params[("encoder_embedding", "tokens", "embedding")] = tokens
    w.take_tied("decoder.embed_tokens.weight", tokens)
    _stack(w, params, cfg, src="encoder", dst=("encoder",), num_layers=cfg.num_layers,
           decoder=False)
    _stack(w, params, cfg, src="decoder", dst=("decoder",),
           num_layers=cfg.num_decoder_layers or cfg.num_layers, decoder=True)
    if cfg.tie_embeddings:
      w.take_tied("lm_head.weight", tokens)
    else:
      params[("head", "proj", "kernel")] = w.take("lm_head.weight", (cfg.vocab_size, d)).T
  w.finish()
  return params
