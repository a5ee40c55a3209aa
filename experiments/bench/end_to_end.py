"""End to end: training tokens/s and MFU of a decoder LM, and KV-cache decode tokens/s.

Training: one jitted AdamW step on random tokens (B × L, bf16 compute, float32 parameters), timed
after warm-up; MFU = tokens/s · `posjax.train.flops.decoder_flops_per_token` / device peak.
Decode: a prompt is prefilled, then `new_tokens` greedy one-token steps run in one jitted
`fori_loop` (no host round trip per token); tokens/s = batch · new_tokens / time of that loop.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from experiments.bench import timing
from posjax import models
from posjax.train import flops


@dataclasses.dataclass(frozen=True)
class ModelSize:
  vocab_size: int = 50304
  dim: int = 768
  num_layers: int = 12
  num_heads: int = 12
  seq_len: int = 1024

  def config(self, pe: str, backend: str) -> models.TransformerConfig:
    return models.TransformerConfig(
        vocab_size=self.vocab_size, dim=self.dim, num_layers=self.num_layers,
        num_heads=self.num_heads, pe=pe, attention_backend=backend, dtype="bfloat16",
        param_dtype="float32", use_bias=False)


GPT2_SMALL = ModelSize()  # 124M with the tied 50304-token embedding
SMOKE = ModelSize(vocab_size=256, dim=64, num_layers=2, num_heads=4, seq_len=64)


def _error(row: dict, error: Exception) -> dict:
  row.update(status=f"error: {type(error).__name__}: {str(error).splitlines()[0][:160]}")
  return row


def train_row(size: ModelSize, pe: str, backend: str, *, batch: int, warmup: int,
              iters: int) -> dict:
  """Training throughput of one (scheme, backend)."""
  row = dict(scheme=pe, backend=backend, batch=batch, seq_len=size.seq_len)
  try:
    cfg = size.config(pe, backend)
    model = models.build("decoder", cfg)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adamw(3e-4, weight_decay=0.1)
    opt_state = tx.init(params)
    tokens = jax.random.randint(jax.random.key(0), (batch, size.seq_len + 1), 0, size.vocab_size)

    def loss_fn(params, tokens):
      logits = nnx.merge(graphdef, params, rest)(tokens[:, :-1])
      return optax.softmax_cross_entropy_with_integer_labels(
          logits.astype(jnp.float32), tokens[:, 1:]).mean()

    @functools.partial(jax.jit, donate_argnums=(0,))
    def step(state, tokens):
      params, opt_state = state
      grads = jax.grad(loss_fn)(params, tokens)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    seconds = timing.median_step_seconds(step, (params, opt_state), tokens, warmup=warmup,
                                         iters=iters)
    tokens_per_s = batch * size.seq_len / seconds
    device = jax.devices()[0]
    utilization = flops.mfu(tokens_per_s, flops.decoder_flops_per_token(cfg, size.seq_len), 1,
                            flops.peak_flops_per_device(device))
    row.update(step_ms=1e3 * seconds, tokens_per_s=tokens_per_s, mfu=utilization, status="ok")
  except Exception as error:  # pylint: disable=broad-except
    _error(row, error)
  return row


def decode_row(size: ModelSize, pe: str, backend: str, *, batch: int, prompt_len: int,
               new_tokens: int, warmup: int, iters: int) -> dict:
  """Greedy decode throughput with the KV cache of one (scheme, backend, batch)."""
  row = dict(scheme=pe, backend=backend, batch=batch, prompt_len=prompt_len,
             new_tokens=new_tokens)
  try:
    model = models.build("decoder", size.config(pe, backend))
    model.init_cache(batch, prompt_len + new_tokens, jnp.bfloat16)
    graphdef, state = nnx.split(model)
    prompt = jax.random.randint(jax.random.key(0), (batch, prompt_len), 0, size.vocab_size)

    @jax.jit
    def prefill(state, prompt):
      model = nnx.merge(graphdef, state)
      logits = model(prompt, decode=True)
      return nnx.state(model), jnp.argmax(logits[:, -1], -1)[:, None].astype(jnp.int32)

    @jax.jit
    def generate(state, token):
      def body(_, carry):
        state, token = carry
        model = nnx.merge(graphdef, state)
        logits = model(token, decode=True)
        return nnx.state(model), jnp.argmax(logits[:, -1], -1)[:, None].astype(jnp.int32)
      return jax.lax.fori_loop(0, new_tokens, body, (state, token))

    filled, first = jax.block_until_ready(prefill(state, prompt))
    # The loop never changes the cache it is given (it returns a new one), so every timed call
    # decodes the same new_tokens positions from the same prefilled cache.
    seconds = timing.median_seconds(generate, filled, first, warmup=warmup, iters=iters)
    row.update(decode_ms=1e3 * seconds, tokens_per_s=batch * new_tokens / seconds, status="ok")
  except Exception as error:  # pylint: disable=broad-except
    _error(row, error)
  return row
