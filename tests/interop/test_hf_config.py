"""config.json -> TransformerConfig: RoPE scalings in both HF spellings, T5 heads, BERT families."""

from __future__ import annotations

import pytest

from posjax import interop
from posjax.interop import bert, llama, t5

LLAMA = {"model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "max_position_embeddings": 4096}


@pytest.mark.parametrize("hf_rope, want", [
    ({}, None),
    ({"rope_scaling": {"type": "linear", "factor": 4.0}}, {"type": "linear", "factor": 4.0}),
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}},
     {"type": "dynamic", "factor": 2.0, "original_max_len": 4096}),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 8.0, "rope_theta": 10000.0,
                          "original_max_position_embeddings": 512, "attention_factor": 1.5}},
     {"type": "yarn", "factor": 8.0, "original_max_len": 512, "beta_fast": 32.0,
      "beta_slow": 1.0, "truncate": True, "attention_factor": 1.5}),
    # HF's yarn: no factor -> max_position_embeddings / original.
    ({"rope_parameters": {"rope_type": "yarn", "original_max_position_embeddings": 1024,
                          "beta_fast": None}},
     {"type": "yarn", "factor": 4.0, "original_max_len": 1024, "beta_fast": 32.0,
      "beta_slow": 1.0, "truncate": True}),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}},
     {"type": "llama3", "factor": 8.0, "original_max_len": 8192, "low_freq_factor": 1.0,
      "high_freq_factor": 4.0}),
])
def test_llama_rope_scaling(hf_rope, want):
  options = llama.rope_options_from_hf({**LLAMA, **hf_rope})
  assert options["scaling"] == want
  assert options["layout"] == "half"
  cfg = interop.config_from_hf({**LLAMA, **hf_rope})  # validated by the rope scheme
  assert cfg.pe == "rope" and cfg.num_kv_heads == 2 and cfg.activation == "swiglu"


def test_llama_rope_theta_in_either_place():
  assert llama.rope_options_from_hf({**LLAMA, "rope_theta": 5e5})["base"] == 5e5
  both = {**LLAMA, "rope_theta": 1.0, "rope_parameters": {"rope_type": "default",
                                                          "rope_theta": 5e5}}
  assert llama.rope_options_from_hf(both)["base"] == 5e5
  top = {**LLAMA, "original_max_position_embeddings": 256,
         "rope_parameters": {"rope_type": "llama3", "factor": 8.0,
                             "original_max_position_embeddings": 8192}}
  assert llama.rope_options_from_hf(top)["scaling"]["original_max_len"] == 256  # HF: top wins


@pytest.mark.parametrize("flags, want", [
    ({}, (False, False, False)),
    ({"attention_bias": True, "mlp_bias": True}, (True, True, True)),
    ({"attention_bias": True}, (True, True, False)),   # tests/fixtures/hf/llama_attention_bias
    ({"mlp_bias": True}, (False, False, True)),
])
def test_llama_bias_settings(flags, want):
  """attention_bias (q, k, v, o) and mlp_bias are independent, as in HF's LlamaConfig."""
  cfg = interop.config_from_hf({**LLAMA, **flags})
  assert (cfg.resolved_qkv_bias, cfg.resolved_out_bias, cfg.resolved_mlp_bias) == want


T5 = {"model_type": "t5", "vocab_size": 64, "d_model": 32, "d_kv": 8, "d_ff": 64,
      "num_layers": 2, "num_heads": 4}


@pytest.mark.parametrize("settings, tied, scale", [
    ({}, True, 32**-0.5),                                               # T5 (4.x and 5.x)
    ({"tie_word_embeddings": False}, False, 1.0),                       # v1.1 as in 4.x
    ({"tie_word_embeddings": True, "scale_decoder_outputs": False}, True, 1.0),  # v1.1, 5.x
])
def test_t5_head(settings, tied, scale):
  cfg = t5.config_from_hf({**T5, **settings})
  assert (cfg.tie_embeddings, cfg.tied_output_scale) == (tied, scale)
  assert cfg.num_decoder_layers == 2 and cfg.pe_shared and cfg.attention_scale == 1.0


@pytest.mark.parametrize("feed_forward_proj, activation", [
    ("relu", "relu"), ("gated-gelu", "geglu"), ("gated-silu", "swiglu"), ("gelu_new", "gelu_tanh")])
def test_t5_activations(feed_forward_proj, activation):
  assert t5.config_from_hf({**T5, "feed_forward_proj": feed_forward_proj}).activation == activation


def test_t5_bad_activation():
  with pytest.raises(ValueError, match="not 'gated-<act>'"):
    t5.config_from_hf({**T5, "feed_forward_proj": "fancy-gelu"})


@pytest.mark.parametrize("architectures, family, options", [
    (["BertForMaskedLM"], "mlm", {}), (["BertForPreTraining"], "pretraining", {}),
    (["BertModel"], "encoder", {}),
    (["BertForSequenceClassification"], "classifier", {"num_classes": 3}),
    (["BertForTokenClassification"], "tagger", {"num_labels": 3}),
])
def test_bert_families(architectures, family, options):
  hf = {"model_type": "bert", "architectures": architectures,
        "id2label": {"0": "a", "1": "b", "2": "c"}}
  assert bert.default_family(hf) == family
  assert bert.head_options(hf, family) == options


def test_bert_relative_positions_are_refused():
  with pytest.raises(ValueError, match="position_embedding_type='relative_key'"):
    bert.config_from_hf({"model_type": "bert", "position_embedding_type": "relative_key"})


def test_missing_required_key():
  with pytest.raises(ValueError, match="has no 'vocab_size'"):
    interop.config_from_hf({k: v for k, v in LLAMA.items() if k != "vocab_size"})
