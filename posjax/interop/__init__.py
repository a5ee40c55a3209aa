"""Hugging Face checkpoint interop: load GPT-2, Llama, Qwen2, BERT, T5 and BLOOM weights.

  from posjax import interop
  model = interop.load_pretrained("path/to/gpt2")     # a local directory; nothing is downloaded
  logits_BLV = model(tokens_BL)

Per architecture (`interop.gpt2`, `llama`, `qwen2`, `bert`, `t5`, `bloom`):
`config_from_hf(hf_config)` gives the `TransformerConfig`, `convert_weights(state, cfg, family)`
the `{path: array}` parameters; `weights.set_params` writes them into a model, checking every
parameter is set once and every checkpoint tensor is used.
"""

from __future__ import annotations

from posjax.interop import bert, bloom, gpt2, llama, qwen2, t5
from posjax.interop.checkpoint import read_config, read_safetensors, read_torch_bin, read_weights
from posjax.interop.loader import ARCHITECTURES, architecture, config_from_hf, convert_checkpoint
from posjax.interop.loader import load_pretrained
from posjax.interop.torch_pickle import load_torch_zip
from posjax.interop.weights import instantiate, set_params

__all__ = ["ARCHITECTURES", "architecture", "bert", "bloom", "config_from_hf",
           "convert_checkpoint", "gpt2", "instantiate", "llama", "load_pretrained",
           "load_torch_zip", "qwen2", "read_config", "read_safetensors", "read_torch_bin",
           "read_weights", "set_params", "t5"]
