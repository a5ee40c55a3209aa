"""Parameter-efficient fine-tuning: identity at initialisation, the LoRA formula, what trains."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from posjax import models
from posjax.models import TransformerConfig
from posjax.nn import peft

CFG = dict(vocab_size=259, dim=32, num_layers=2, num_heads=4, mlp_dim=64)
TOKENS = jnp.asarray(np.random.RandomState(0).randint(3, 259, (2, 12)))


def build(family, pe, method, **peft_fields):
  model = models.build(family, TransformerConfig(pe=pe, **CFG), seed=0,
                       **({"num_classes": 3} if family == "classifier" else {"num_labels": 3}))
  model.eval()
  before = model(TOKENS)
  config = peft.PeftConfig(method=method, **peft_fields)
  peft.apply(model, config)
  model.eval()
  return model, before, config


@pytest.mark.parametrize("family, pe, method", [
    ("classifier", "learned", "lora"), ("classifier", "alibi", "adapters"),
    ("tagger", "rope", "lora"), ("tagger", "t5", "adapters"), ("classifier", "rope", "adapters"),
    ("tagger", "alibi", "lora")])
def test_lora_and_adapters_start_as_the_identity(family, pe, method):
  model, before, _ = build(family, pe, method,
                           lora_targets=("query", "key", "value", "out", "wi", "wo"))
  np.testing.assert_array_equal(model(TOKENS), before)


def test_lora_computes_base_plus_scaled_low_rank_update():
  rngs = nnx.Rngs(0)
  for base, x in [(nnx.Linear(6, 5, rngs=rngs), jnp.ones((2, 3, 6))),
                  (nnx.LinearGeneral((2, 3), 5, axis=(-2, -1), rngs=rngs),
                   jax.random.normal(jax.random.key(1), (2, 4, 2, 3)))]:
    lora = peft.LoRA(base, rank=2, alpha=6.0, rngs=rngs)
    lora.lora_b[...] = jax.random.normal(jax.random.key(2), lora.lora_b.shape)
    flat_x = np.asarray(x).reshape(x.shape[:2] + (-1,))
    expected = np.asarray(base(x)) + 3.0 * (flat_x @ np.asarray(lora.lora_a[...])
                                            @ np.asarray(lora.lora_b[...])).reshape(
                                                x.shape[:2] + (5,))
    np.testing.assert_allclose(lora(x), expected, rtol=1e-5, atol=1e-5)


def _trained(model, config):
  _, params, _ = nnx.split(model, nnx.Param, ...)
  params = nnx.to_pure_dict(params)
  mask = peft.trainable_mask(params, config)
  names = ["/".join(str(getattr(k, "key", k)) for k in path)
           for path, flag in jax.tree_util.tree_leaves_with_path(mask) if flag]
  return names, peft.count(params, mask)


def test_what_each_method_trains():
  head = {"head/classifier/bias", "head/classifier/kernel", "head/representation/bias",
          "head/representation/kernel"}
  model, _, config = build("classifier", "learned", "bitfit")
  names, (trained, total) = _trained(model, config)
  assert set(names) - head and all(n.endswith("bias") for n in set(names) - head)
  model, _, config = build("classifier", "learned", "freeze_bottom", freeze_layers=1)
  names, _ = _trained(model, config)
  assert not any("blocks/0/" in n or "embedding" in n for n in names)
  assert any("blocks/1/" in n for n in names)
  model, _, config = build("classifier", "learned", "prompt", prompt_length=5)
  names, (trained, _) = _trained(model, config)
  assert set(names) == head | {"encoder/prompt/embedding"}
  assert trained == 5 * 32 + (32 * 3 + 3) + (32 * 32 + 32)
  model, _, config = build("classifier", "rope", "lora", lora_rank=4)
  names, (trained, _) = _trained(model, config)
  # query and value in both layers: (32·4 + 4·32) each
  assert trained - (32 * 3 + 3 + 32 * 32 + 32) == 2 * 2 * (32 * 4 + 4 * 32)
  assert all(n.split("/")[-1] in ("lora_a", "lora_b") for n in set(names) - head)


def test_prompt_puts_text_after_the_prompt():
  model, _, _ = build("tagger", "learned", "prompt", prompt_length=4)
  assert model(TOKENS).shape == (2, 12, 3)  # prompt states are not tagged


def test_pretrained_path_drops_the_lora_wrapper():
  assert peft.pretrained_path(("encoder", "blocks", "0", "attention", "query", "base",
                               "kernel")) == ("encoder", "blocks", "0", "attention", "query",
                                              "kernel")


def test_config_errors():
  with pytest.raises(ValueError, match="peft.method='qlora'"):
    peft.PeftConfig(method="qlora").validate(2)
  with pytest.raises(ValueError, match="freeze_layers=3 must be in 1..2"):
    peft.PeftConfig(method="freeze_bottom", freeze_layers=3).validate(2)
  with pytest.raises(ValueError, match="lora_targets=query,proj"):
    peft.PeftConfig.from_config({"method": "lora", "lora_targets": "query,proj"}).validate(2)
  with pytest.raises(ValueError, match="unknown peft fields"):
    peft.PeftConfig.from_config({"rank": 4})
  with pytest.raises(ValueError, match="encoder"):
    peft.apply(models.build("decoder", TransformerConfig(pe="rope", **CFG)),
               peft.PeftConfig(method="prompt"))
