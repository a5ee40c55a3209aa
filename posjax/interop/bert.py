"""BERT (Devlin et al. 2019) -> posjax encoder families with a learned absolute position table.

HF layout: `bert.embeddings.{word,position,token_type}_embeddings` and `embeddings.LayerNorm`;
per layer `attention.self.{query,key,value}`, `attention.output.dense` + `attention.output.
LayerNorm`, `intermediate.dense`, `output.dense` + `output.LayerNorm` (post-LN, eps
`layer_norm_eps` = 1e-12, exact GELU); heads: masked LM `cls.predictions.transform.{dense,
LayerNorm}` + `cls.predictions.bias` with the decoder tied to the word embeddings; sequence
classification `bert.pooler.dense` (dense + tanh on the first token) + `classifier`; token
classification `classifier`.

Families: `pretraining` (BertForPreTraining: the masked-LM head and the next-sentence head,
`bert.pooler.dense` + `cls.seq_relationship`, posjax `nsp.pooler` and `nsp.classifier`), `mlm`
(BertForMaskedLM, or BertForPreTraining without its NSP head), `encoder` (the trunk alone),
`classifier` (BertForSequenceClassification: the pooler becomes the head's representation layer)
and `tagger` (BertForTokenClassification). Tensors of a head the chosen family lacks (the NSP
head and the pooler for `mlm`, ...) are left out and logged; a classification head missing from the
checkpoint (e.g. fine-tuning from an MLM checkpoint) must be asked for with `fresh=("head",)`.
HF's attention mask corresponds to posjax's `segment_ids_BL` (1 for tokens, 0 for padding).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from posjax.interop.weights import HFTensors, Params, activation_from_hf, hf_get
from posjax.interop.weights import put_attention, put_linear, put_norm
from posjax.models import TransformerConfig

MODEL_TYPE = "bert"
FAMILIES = ("mlm", "pretraining", "encoder", "classifier", "tagger")
# Old checkpoints keep the default position ids / token type ids as buffers.
IGNORE = (r"embeddings\.position_ids$", r"embeddings\.token_type_ids$")
_HEADS = ("cls.", "pooler.", "classifier.")


def _architecture(hf_config: Mapping[str, Any]) -> str:
  return (hf_config.get("architectures") or [""])[0]


def default_family(hf_config: Mapping[str, Any]) -> str:
  """From `architectures`: the classification models to their families, BertModel to `encoder`,
  BertForPreTraining to `pretraining`, everything else (BertForMaskedLM, none given) to `mlm`."""
  return {"BertForSequenceClassification": "classifier", "BertForTokenClassification": "tagger",
          "BertModel": "encoder",
          "BertForPreTraining": "pretraining"}.get(_architecture(hf_config), "mlm")


def num_labels(hf_config: Mapping[str, Any]) -> int:
  if hf_config.get("id2label"):
    return len(hf_config["id2label"])
  return int(hf_config.get("num_labels", 2))


def head_options(hf_config: Mapping[str, Any], family: str) -> dict[str, Any]:
  """`build` options of the head: the number of labels for the classification families."""
  if family == "classifier":
    return {"num_classes": num_labels(hf_config)}
  if family == "tagger":
    return {"num_labels": num_labels(hf_config)}
  return {}


def config_from_hf(hf_config: Mapping[str, Any]) -> TransformerConfig:
  """The posjax `TransformerConfig` of a BERT `config.json` dict."""
  position_type = hf_config.get("position_embedding_type", "absolute")
  if position_type != "absolute":
    raise ValueError(f"bert: position_embedding_type={position_type!r} is not supported (only "
                     "'absolute', the learned table)")
  if hf_config.get("is_decoder") or hf_config.get("add_cross_attention"):
    raise ValueError("bert: decoder / cross-attention BERT configs are not supported")
  dim = hf_get(hf_config, "hidden_size")
  return TransformerConfig(
      vocab_size=hf_get(hf_config, "vocab_size"), dim=dim,
      num_layers=hf_get(hf_config, "num_hidden_layers"),
      num_heads=hf_get(hf_config, "num_attention_heads"),
      mlp_dim=hf_get(hf_config, "intermediate_size", default=4 * dim),
      activation=activation_from_hf(hf_get(hf_config, "hidden_act", default="gelu"),
                                    gated=False, model_type=MODEL_TYPE),
      norm="layernorm", norm_position="post",
      norm_eps=hf_get(hf_config, "layer_norm_eps", default=1e-12), use_bias=True,
      final_norm=False, embed_norm=True,
      num_token_types=hf_get(hf_config, "type_vocab_size", default=2), tie_embeddings=True,
      pe="learned", pe_options={"max_len": hf_get(hf_config, "max_position_embeddings")})


def _renamed(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """TF-era names (`LayerNorm.gamma` / `.beta`) as the current ones (`.weight` / `.bias`)."""
  out = {}
  for name, value in state.items():
    if name.endswith(".gamma") or name.endswith(".beta"):
      name = name.rsplit(".", 1)[0] + (".weight" if name.endswith(".gamma") else ".bias")
    out[name] = value
  return out


def _dense(w: HFTensors, name: str, out_features: int, in_features: int):
  """An `nn.Linear` as ([in, out] kernel, bias)."""
  return (w.take(name + ".weight", (out_features, in_features)).T,
          w.take(name + ".bias", (out_features,)))


def _layernorm(w: HFTensors, name: str, dim: int):
  return w.take(name + ".weight", (dim,)), w.take(name + ".bias", (dim,))


def convert_weights(state: Mapping[str, np.ndarray], cfg: TransformerConfig,
                    family: str = "mlm") -> Params:
  """posjax parameters `{path: array}` of a BERT state dict (HF names) for `family`."""
  if family not in FAMILIES:
    raise ValueError(f"bert converts to the families {FAMILIES}, not {family!r}")
  if family in ("mlm", "pretraining") and cfg.activation != "gelu":
    raise ValueError(f"bert: posjax's masked-LM head uses exact GELU, the checkpoint "
                     f"{cfg.activation}; load it as family='encoder' instead")
  w = HFTensors(_renamed(state), model_type=MODEL_TYPE, base_prefix="bert.", ignore=IGNORE)
  d, f, h = cfg.dim, cfg.resolved_mlp_dim, cfg.num_heads
  encoder = () if family == "encoder" else ("encoder",)
  stack, embedding = encoder + ("stack", "blocks"), encoder + ("embedding",)
  params: Params = {}
  tokens = w.take("embeddings.word_embeddings.weight", (cfg.vocab_size, d))
  params[embedding + ("tokens", "embedding")] = tokens
  params[embedding + ("positional", "params", "table")] = w.take(
      "embeddings.position_embeddings.weight", (cfg.pe_options["max_len"], d))
  params[embedding + ("token_types", "embedding")] = w.take(
      "embeddings.token_type_embeddings.weight", (cfg.num_token_types, d))
  put_norm(params, embedding + ("norm",), *_layernorm(w, "embeddings.LayerNorm", d))
  for i in range(cfg.num_layers):
    src, dst = f"encoder.layer.{i}.", stack + (i,)
    (q, qb), (k, kb), (v, vb), (o, ob) = (
        _dense(w, src + "attention.self.query", d, d), _dense(w, src + "attention.self.key", d, d),
        _dense(w, src + "attention.self.value", d, d),
        _dense(w, src + "attention.output.dense", d, d))
    put_attention(params, dst + ("attention",), num_heads=h, num_kv_heads=h,
                  head_dim=cfg.resolved_head_dim, q_DX=q, k_DX=k, v_DX=v, o_XD=o, q_bias=qb,
                  k_bias=kb, v_bias=vb, o_bias=ob)
    put_norm(params, dst + ("attention_norm",),
             *_layernorm(w, src + "attention.output.LayerNorm", d))
    put_linear(params, dst + ("mlp", "wi"), *_dense(w, src + "intermediate.dense", f, d))
    put_linear(params, dst + ("mlp", "wo"), *_dense(w, src + "output.dense", d, f))
    put_norm(params, dst + ("mlp_norm",), *_layernorm(w, src + "output.LayerNorm", d))

  if family in ("mlm", "pretraining"):
    put_linear(params, ("head", "transform"), *_dense(w, "cls.predictions.transform.dense", d, d))
    put_norm(params, ("head", "norm"), *_layernorm(w, "cls.predictions.transform.LayerNorm", d))
    bias = w.take("cls.predictions.bias", (cfg.vocab_size,))
    params[("head", "bias")] = bias
    w.take_tied("cls.predictions.decoder.weight", tokens)
    w.take_tied("cls.predictions.decoder.bias", bias)
  if family == "pretraining" and "cls.seq_relationship.weight" in w:
    # Without them (a BertForMaskedLM checkpoint) the head must be asked for: fresh=("nsp",).
    put_linear(params, ("nsp", "pooler"), *_dense(w, "pooler.dense", d, d))
    put_linear(params, ("nsp", "classifier"), *_dense(w, "cls.seq_relationship", 2, d))
  elif family in ("classifier", "tagger") and "classifier.weight" in w:
    # BertForSequenceClassification has a pooler, BertForTokenClassification none: a head is
    # only taken from the checkpoint of its own kind.
    pooled = "pooler.dense.weight" in w
    if family == "classifier" and pooled:
      put_linear(params, ("head", "representation"), *_dense(w, "pooler.dense", d, d))
    if pooled == (family == "classifier"):
      put_linear(params, ("head", "classifier"), *_dense(w, "classifier", None, d))
  for prefix in _HEADS:
    w.drop(prefix)
  w.finish()
  return params
