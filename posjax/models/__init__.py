"""The three model families, built from a `TransformerConfig` (or a config dict)."""

from __future__ import annotations

from typing import Any, Mapping, Union

from flax import nnx

from posjax.models.config import TransformerConfig
from posjax.models.decoder import DecoderLM
from posjax.models.encoder import Encoder, EncoderForMaskedLM, EncoderForPreTraining
from posjax.models.encoder import EncoderForSequenceClassification, EncoderForTokenClassification
from posjax.models.encoder_decoder import EncoderDecoderLM

FAMILIES = {
    "decoder": DecoderLM,
    "encoder": Encoder,
    "mlm": EncoderForMaskedLM,
    "pretraining": EncoderForPreTraining,   # masked LM + next-sentence prediction (BERT)
    "classifier": EncoderForSequenceClassification,
    "tagger": EncoderForTokenClassification,
    "encoder_decoder": EncoderDecoderLM,
}


def build(family: str, config: Union[TransformerConfig, Mapping[str, Any]], *, seed: int = 0,
          rngs: nnx.Rngs | None = None, **head_options) -> nnx.Module:
  """A model of `family` (see FAMILIES) with fresh parameters.

  Variables carry logical axis names; outside a mesh they are created unsharded.
  """
  if family not in FAMILIES:
    raise ValueError(f"unknown model family {family!r}; choose one of {sorted(FAMILIES)}")
  if not isinstance(config, TransformerConfig):
    config = TransformerConfig.from_dict(config)
  rngs = rngs if rngs is not None else nnx.Rngs(params=seed, dropout=seed + 1)
  with nnx.use_eager_sharding(False):
    return FAMILIES[family](config, rngs=rngs, **head_options)


__all__ = ["FAMILIES", "TransformerConfig", "build", "DecoderLM", "Encoder", "EncoderForMaskedLM",
           "EncoderForPreTraining", "EncoderForSequenceClassification",
           "EncoderForTokenClassification", "EncoderDecoderLM"]
