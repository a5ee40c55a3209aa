"""`load_pretrained`: a local Hugging Face checkpoint directory as a posjax model.

Dispatch is on `config.json`'s `model_type`; each architecture module (`gpt2`, `llama`, `qwen2`,
`bert`, `t5`, `bloom`) provides `FAMILIES`, `config_from_hf(hf_config) -> TransformerConfig` and
`convert_weights(state, cfg, family) -> {path: array}`; those with several families or heads also
provide `default_family(hf_config)` and `head_options(hf_config, family)`.
"""

from __future__ import annotations

import types
from typing import Any, Iterable, Mapping, Optional, Union

import jax.numpy as jnp
from flax import nnx

from posjax import models
from posjax.interop import bert, bloom, gpt2, llama, qwen2, t5
from posjax.interop.checkpoint import read_config, read_weights
from posjax.interop.weights import Params, instantiate, log
from posjax.models import TransformerConfig
from posjax.models.config import DTYPES

ARCHITECTURES: dict[str, types.ModuleType] = {
    module.MODEL_TYPE: module for module in (gpt2, llama, qwen2, bert, t5, bloom)}


def architecture(hf_config: Mapping[str, Any]) -> types.ModuleType:
  """The converter module for a `config.json` dict, by its `model_type`."""
  model_type = hf_config.get("model_type")
  if model_type not in ARCHITECTURES:
    raise ValueError(f"unsupported model_type {model_type!r} in config.json; posjax.interop "
                     f"converts {sorted(ARCHITECTURES)}")
  return ARCHITECTURES[model_type]


def _dtype_name(dtype: Any) -> str:
  name = jnp.dtype(dtype).name
  if name not in DTYPES:
    raise ValueError(f"dtype {dtype!r}: choose one of {sorted(DTYPES)}")
  return name


def config_from_hf(hf_config: Mapping[str, Any]) -> TransformerConfig:
  """The posjax `TransformerConfig` of a `config.json` dict of any supported architecture."""
  return architecture(hf_config).config_from_hf(hf_config)


def convert_checkpoint(path: str, family: Optional[str] = None, **config_overrides
                       ) -> tuple[str, TransformerConfig, dict[str, Any], Params]:
  """Reads and converts a checkpoint without building a model.

  Returns `(family, config, head_options, params)`: what `models.build(family, config,
  **head_options)` needs, and the `{path: numpy array}` parameters for `weights.set_params`.
  """
  hf_config = read_config(path)
  arch = architecture(hf_config)
  # Decoder-only architectures need neither hook: their one family, no head options.
  default_family = getattr(arch, "default_family", lambda _: arch.FAMILIES[0])
  head_options = getattr(arch, "head_options", lambda *_: {})
  family = family or default_family(hf_config)
  if family not in arch.FAMILIES:
    raise ValueError(f"a {arch.MODEL_TYPE} checkpoint loads as one of the families "
                     f"{arch.FAMILIES}, not {family!r}")
  cfg = arch.config_from_hf(hf_config)
  params = arch.convert_weights(read_weights(path), cfg, family)
  if config_overrides:
    overrides = dict(config_overrides)
    if "pe_options" in overrides:  # merged, so a scaling can be added to the checkpoint's base
      overrides["pe_options"] = {**cfg.pe_options, **overrides["pe_options"]}
    cfg = cfg.replace(**overrides)
  return family, cfg, head_options(hf_config, family), params


def load_pretrained(path: str, family: Optional[str] = None, *,
                    dtype: Union[str, Any] = "float32", param_dtype: Union[str, Any, None] = None,
                    config_overrides: Optional[Mapping[str, Any]] = None,
                    positions: Optional[str] = None, fresh: Iterable[Any] = (), seed: int = 0,
                    **head_options) -> nnx.Module:
  """The posjax model of a local Hugging Face checkpoint directory, weights set.

  Args:
    path: a directory with `config.json` and `model.safetensors` (or a sharded
      `model.safetensors.index.json`, or `pytorch_model.bin`, read without torch). Nothing is
      downloaded.
    family: the posjax model family (`models.FAMILIES`); default from the checkpoint:
      gpt2, llama, bloom -> "decoder"; bert -> "mlm" ("classifier" / "tagger" / "encoder" for
      BertForSequenceClassification / BertForTokenClassification / BertModel); t5 ->
      "encoder_decoder" ("encoder" for T5EncoderModel).
    dtype: compute dtype (float32, bfloat16, float16), also the parameters' unless
      `param_dtype` is given; the checkpoint's tensors are cast to it.
    config_overrides: `TransformerConfig` fields to change after conversion, e.g.
      `{"attention_backend": "chunked"}`; `pe_options` are merged into the checkpoint's, so
      `{"pe_options": {"scaling": {"type": "yarn", ...}}}` extends a RoPE model's context and
      keeps its base. Fields that change parameter shapes are caught as shape mismatches.
    positions: the positions the model gives itself when called without `positions_BL`
      (`TransformerConfig.positions`; None keeps posjax's default, "from_first_token"). Padding
      is segment id 0 (HF's attention mask), and "from_first_token" restarts the positions at 0
      at each segment's first token, so on a LEFT-padded row the first real token is position 0.
      HF's BERT, and GPT-2 called without `position_ids`, use the column index 0..L-1 whatever
      the padding: on left-padded rows their logits differ from posjax's by the learned position
      rows. `positions="columns"` matches them; "from_first_token" matches HF given
      `position_ids = max(cumsum(attention_mask) - 1, 0)` (as `generate` computes them). With no
      padding, or padding on the right, both agree. Relative schemes (Llama's RoPE, BLOOM's
      ALiBi, T5's buckets) see only differences of positions, so the choice does not change
      their logits (except through RoPE's dynamic scaling, which reads the largest position).
    fresh: parameter path prefixes (a name or a tuple, e.g. "head") left randomly initialized
      (from `seed`) instead of loaded, e.g. a new classification head; what the checkpoint
      holds for them is not used.
    head_options: extra `models.build` options (e.g. `num_classes`), overriding the
      checkpoint's.

  Returns:
    The model in eval mode (dropout off; `model.train()` turns it on, at `cfg.dropout`, which
    is 0 unless overridden).

  Raises:
    ValueError: missing directory or files, unknown `model_type`, unsupported settings, a
      tensor missing or of the wrong shape, tensors left unused, parameters left unset.
  """
  overrides = dict(config_overrides or {})
  if positions is not None:
    overrides["positions"] = positions
  overrides["dtype"] = _dtype_name(dtype)
  overrides["param_dtype"] = _dtype_name(param_dtype if param_dtype is not None else dtype)
  family, cfg, options, params = convert_checkpoint(path, family, **overrides)
  options.update(head_options)
  fresh = [p if isinstance(p, (tuple, list)) else (p,) for p in fresh]
  kept = {k: v for k, v in params.items() if not any(k[:len(p)] == tuple(p) for p in fresh)}
  if len(kept) < len(params):
    log.info("%s: %d checkpoint tensor(s) under %s not loaded (fresh)", path,
             len(params) - len(kept), fresh)
  model = instantiate(lambda: models.build(family, cfg, seed=seed, **options), kept, fresh=fresh)
  model.eval()
  return model
