"""An HF `BertForPreTraining` checkpoint loads with both heads and gives transformers' logits.

The fixture (tests/fixtures/hf/bert_pretraining, made by make_hf_fixtures.py) holds HF's masked-LM
logits (`logits`) and next-sentence logits (`seq_relationship_logits`) for two rows with token
types and padding.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hf_testing import expected, fixture_dir, parts, write_checkpoint
from posjax import interop
from test_hf_parity import TOL, check_logits


@nnx.jit
def _forward(model, ids, segment_ids, token_types):
  return model(ids, segment_ids_BL=segment_ids, token_types_BL=token_types)


def _inputs(data):
  return [jnp.asarray(data[k], jnp.int32)
          for k in ("input_ids", "attention_mask", "token_type_ids")]


def test_both_heads_match_hf():
  data = expected("bert_pretraining")
  model = interop.load_pretrained(fixture_dir("bert_pretraining"))
  assert type(model).__name__ == "EncoderForPreTraining"
  assert interop.convert_checkpoint(fixture_dir("bert_pretraining"))[0] == "pretraining"
  mlm_logits, nsp_logits = _forward(model, *_inputs(data))
  check_logits(np.asarray(mlm_logits), data)
  assert nsp_logits.shape == (2, 2)
  np.testing.assert_allclose(np.asarray(nsp_logits), data["seq_relationship_logits"], **TOL)
  # The head is not trivially near zero: the two rows' logits differ clearly.
  assert np.abs(np.diff(data["seq_relationship_logits"], axis=0)).max() > 0.5


def test_mlm_family_leaves_the_nsp_head_out():
  data = expected("bert_pretraining")
  model = interop.load_pretrained(fixture_dir("bert_pretraining"), family="mlm")
  assert type(model).__name__ == "EncoderForMaskedLM"
  ids, segment_ids, token_types = _inputs(data)
  logits = nnx.jit(lambda m, *a: m(a[0], segment_ids_BL=a[1], token_types_BL=a[2]))(
      model, ids, segment_ids, token_types)
  check_logits(np.asarray(logits), data)


def test_an_mlm_checkpoint_needs_a_fresh_nsp_head(tmp_path):
  """BertForMaskedLM has no pooler or NSP head: as family="pretraining" they must be asked for."""
  with pytest.raises(ValueError, match="fresh"):
    interop.load_pretrained(fixture_dir("bert"), family="pretraining")
  model = interop.load_pretrained(fixture_dir("bert"), family="pretraining", fresh=["nsp"])
  data = expected("bert")
  mlm_logits, _ = _forward(model, *_inputs(data))
  check_logits(np.asarray(mlm_logits), data)


def test_a_missing_pooler_is_named(tmp_path):
  config, state = parts("bert_pretraining")
  del state["bert.pooler.dense.weight"]
  with pytest.raises(ValueError, match="pooler.dense.weight"):
    interop.load_pretrained(write_checkpoint(str(tmp_path / "ckpt"), config, state))
