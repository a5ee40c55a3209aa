"""Qwen2 (Yang et al. 2024, "Qwen2 Technical Report") -> posjax decoder with RoPE.

Llama's layout and names (`posjax.interop.llama`), with biases on the q, k and v projections only:
none on `o_proj` and none in the MLP (HF's `Qwen2Attention` / `Qwen2MLP` fix them so; the config
has no flag). Sliding-window attention (`use_sliding_window` with `sliding_attention` layers) has
no posjax equivalent and is refused at load; with it off (the default, and every released
Qwen2 config) all layers attend fully.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from posjax.interop import llama
from posjax.interop.weights import Params, hf_get
from posjax.models import TransformerConfig

MODEL_TYPE = "qwen2"
FAMILIES = llama.FAMILIES


def config_from_hf(hf_config: Mapping[str, Any]) -> TransformerConfig:
  """The posjax `TransformerConfig` of a Qwen2 `config.json` dict."""
  window = hf_config.get("sliding_window") if hf_config.get("use_sliding_window") else None
  layer_types = hf_config.get("layer_types") or [  # HF's default when config.json has none
      "sliding_attention" if window is not None and i >= hf_config.get("max_window_layers", 28)
      else "full_attention" for i in range(hf_get(hf_config, "num_hidden_layers"))]
  sliding = [i for i, kind in enumerate(layer_types) if kind == "sliding_attention"]
  if window is not None and sliding:
    raise ValueError(f"qwen2: sliding-window attention (window {window} in layers {sliding}) is "
                     "not supported by posjax's decoder")
  return llama.llama_config(hf_config, qkv_bias=True, out_bias=False, mlp_bias=False)


def convert_weights(state: Mapping[str, np.ndarray], cfg: TransformerConfig,
                    family: str = "decoder") -> Params:
  """posjax parameters `{path: array}` of a Qwen2 state dict (HF names)."""
  return llama.convert_weights(state, cfg, family, model_type=MODEL_TYPE)
