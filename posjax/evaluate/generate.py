"""Text generation with a KV cache: greedy, temperature, top-k and nucleus (top-p) sampling.

  model = load_for_generation(config, workdir)          # a trained run's DecoderLM
  result = generate(model, [[5, 6, 7], [8]], max_new_tokens=20, temperature=0.8, top_p=0.95)
  result.tokens[i, :result.lengths[i]]                   # row i's continuation
  generate_text(model, tokenizer, ["ROMEO:", "JULIET:"], max_new_tokens=100)

Prompts of different lengths share one batch by left padding: pad slots get segment id 0 (so
attention never sees them) and each prompt's real tokens get positions 0, 1, ..., whatever its
padding, exactly as in training. After one prefill call, every later token is decoded one at a time
inside a `jax.lax.while_loop` (no Python loop per token), which stops early once every row has
emitted a stop token. Works with every positional scheme, because the model takes explicit
positions and the cache keeps them.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from posjax import encodings, models
from posjax.data.tokenizers import check_token_ids
from posjax.evaluate.sampling import check_sampling, sample_next
from posjax.run import init_from, record
from posjax.run.experiment import Run


@dataclasses.dataclass
class GenerationResult:
  """What `generate` returns, as host arrays; row i of each belongs to prompt i.

  tokens:         int32 `[B, max_new_tokens]`: the continuation; `pad_id` after it ends.
  lengths:        int32 `[B]`: tokens generated per row, its stop token included.
  stopped:        bool `[B]`: whether the row ended on a stop token (else it ran out of room).
  logprobs:       float32 `[B, max_new_tokens]`: log-probability of each chosen token under the
                  model (before temperature and filtering); 0 after the row ends.
  prompt_lengths: int32 `[B]`: tokens per prompt.
  """

  tokens: np.ndarray
  lengths: np.ndarray
  stopped: np.ndarray
  logprobs: np.ndarray
  prompt_lengths: np.ndarray

  def continuations(self) -> list[np.ndarray]:
    """Each row's generated tokens, cut at its length."""
    return [row[:n] for row, n in zip(self.tokens, self.lengths)]


# ------------------------------------------------------------------------------------------------
# The batch
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PromptBatch:
  """Left-padded prompts, `[B, P]` each; pad slots have segment id 0 and position 0."""

  tokens: np.ndarray
  positions: np.ndarray
  segment_ids: np.ndarray
  lengths: np.ndarray


def left_pad(prompts: Sequence[np.ndarray], pad_id: int) -> PromptBatch:
  """One batch of prompts of different lengths, right-aligned so each ends in the last column."""
  lengths = np.asarray([len(p) for p in prompts], np.int32)
  batch, width = len(prompts), int(lengths.max())
  tokens = np.full((batch, width), pad_id, np.int32)
  positions = np.zeros((batch, width), np.int32)
  segment_ids = np.zeros((batch, width), np.int32)
  for row, (prompt, n) in enumerate(zip(prompts, lengths)):
    tokens[row, width - n:] = prompt
    positions[row, width - n:] = np.arange(n)
    segment_ids[row, width - n:] = 1
  return PromptBatch(tokens, positions, segment_ids, lengths)


def position_limit(cfg) -> Optional[int]:
  """The number of positions the model's scheme can encode (a learned table's max_len), or None."""
  scheme = encodings.get(cfg.pe)
  if "max_len" not in scheme.defaults:
    return None
  return int(scheme.options(**cfg.pe_options)["max_len"])


def _check_inputs(model, prompts, *, max_new_tokens, stop_tokens, pad_id) -> list[np.ndarray]:
  """The prompts as int32 arrays, after every check that can be made before compiling."""
  if not (hasattr(model, "init_cache") and hasattr(model, "decoder")
          and not hasattr(model, "encoder")):
    raise ValueError(f"generate needs a decoder-only LM (posjax.models.DecoderLM), got "
                     f"{type(model).__name__}")
  cfg = model.config
  if isinstance(prompts, (str, bytes)) or not len(prompts):
    raise ValueError("prompts must be a non-empty list of token-id sequences (for text, use "
                     "generate_text)")
  arrays = [np.asarray(p).reshape(-1) for p in prompts]
  for i, p in enumerate(arrays):
    if not p.size:
      raise ValueError(f"prompt {i} is empty: every prompt needs at least one token")
    if not np.issubdtype(p.dtype, np.integer):
      raise ValueError(f"prompt {i} holds {p.dtype} values, not integer token ids")
    check_token_ids(p, cfg.vocab_size, what=f"prompt {i}")
  check_token_ids(list(stop_tokens), cfg.vocab_size, what="stop_tokens")
  check_token_ids([pad_id], cfg.vocab_size, what="pad_id")
  if int(max_new_tokens) != max_new_tokens or max_new_tokens < 0:
    raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens}")
  limit = position_limit(cfg)
  longest = max(len(p) for p in arrays)
  if limit is not None and longest + max_new_tokens > limit:
    raise ValueError(
        f"the longest prompt ({longest} tokens) plus max_new_tokens={max_new_tokens} makes "
        f"{longest + max_new_tokens} positions, past the {cfg.pe} position table of "
        f"max_len={limit}: shorten the prompt, lower max_new_tokens to at most "
        f"{max(limit - longest, 0)}, or use a model with a larger max_len")
  return [p.astype(np.int32) for p in arrays]


# ------------------------------------------------------------------------------------------------
# The device loop
# ------------------------------------------------------------------------------------------------


class _Static:
  """A `GraphDef` as a static jit argument: hashed by its text (its config holds a dict)."""

  def __init__(self, graphdef):
    self.graphdef = graphdef
    self._hash = hash(repr(graphdef))

  def __hash__(self):
    return self._hash

  def __eq__(self, other):
    return isinstance(other, _Static) and self.graphdef == other.graphdef


def _step_logits(graphdef, cache, rest, tokens_BL, positions_BL, segment_ids_BL):
  """Run the model on new tokens with the cache: last-position logits `[B, V]`, new cache."""
  model = nnx.merge(graphdef, cache, rest)
  logits_BLV = model(tokens_BL, positions_BL, segment_ids_BL, decode=True)
  return logits_BLV[:, -1].astype(jnp.float32), nnx.state(model, nnx.Cache)


@functools.partial(jax.jit, static_argnames=("static", "max_new_tokens", "greedy", "pad_id"))
def _generate_on_device(cache, rest, tokens_BP, positions_BP, segment_ids_BP, rng, stop_S,
                        temperature, top_k, top_p, *, static: _Static, max_new_tokens: int,
                        greedy: bool, pad_id: int):
  """Prefill, then a `while_loop` of one-token steps until every row stops or room runs out.

  The sampling options are traced, so changing them (or the seed) does not recompile; only
  `greedy` (temperature 0) is static.
  """
  graphdef = static.graphdef
  if greedy:
    temperature = 0.0
  batch = tokens_BP.shape[0]
  next_position_B = jnp.max(positions_BP, axis=-1) + 1

  def choose(step, logits_BV, done_B):
    token_B = sample_next(logits_BV, jax.random.fold_in(rng, step), temperature=temperature,
                          top_k=top_k, top_p=top_p)
    logprob_B = jnp.take_along_axis(jax.nn.log_softmax(logits_BV), token_B[:, None], axis=-1)[:, 0]
    return jnp.where(done_B, pad_id, token_B), jnp.where(done_B, 0.0, logprob_B)

  def record(step, token_B, logprob_B, done_B, length_B, out_BT, logprobs_BT):
    out_BT = out_BT.at[:, step].set(token_B)
    logprobs_BT = logprobs_BT.at[:, step].set(logprob_B)
    length_B = length_B + (~done_B).astype(jnp.int32)
    done_B = done_B | jnp.isin(token_B, stop_S)
    return done_B, length_B, out_BT, logprobs_BT

  logits_BV, cache = _step_logits(graphdef, cache, rest, tokens_BP, positions_BP, segment_ids_BP)
  out_BT = jnp.full((batch, max_new_tokens), pad_id, jnp.int32)
  logprobs_BT = jnp.zeros((batch, max_new_tokens), jnp.float32)
  done_B = jnp.zeros((batch,), bool)
  token_B, logprob_B = choose(0, logits_BV, done_B)
  done_B, length_B, out_BT, logprobs_BT = record(
      0, token_B, logprob_B, done_B, jnp.zeros((batch,), jnp.int32), out_BT, logprobs_BT)

  def cond(carry):
    step, _, done_B, *_ = carry
    return (step < max_new_tokens) & ~jnp.all(done_B)

  def body(carry):
    step, cache, done_B, length_B, out_BT, logprobs_BT = carry
    previous_B1 = jax.lax.dynamic_slice_in_dim(out_BT, step - 1, 1, axis=1)
    positions_B1 = (next_position_B + step - 1)[:, None]
    segment_ids_B1 = jnp.where(done_B, 0, 1)[:, None].astype(jnp.int32)
    logits_BV, cache = _step_logits(graphdef, cache, rest, previous_B1, positions_B1,
                                    segment_ids_B1)
    token_B, logprob_B = choose(step, logits_BV, done_B)
    done_B, length_B, out_BT, logprobs_BT = record(step, token_B, logprob_B, done_B, length_B,
                                                   out_BT, logprobs_BT)
    return step + 1, cache, done_B, length_B, out_BT, logprobs_BT

  carry = (jnp.int32(1), cache, done_B, length_B, out_BT, logprobs_BT)
  _, _, done_B, length_B, out_BT, logprobs_BT = jax.lax.while_loop(cond, body, carry)
  return out_BT, length_B, done_B, logprobs_BT


# ------------------------------------------------------------------------------------------------
# The API
# ------------------------------------------------------------------------------------------------


def _stop_array(stop_tokens: Sequence[int]) -> jax.Array:
  """The stop ids, padded with -1 (never a token) to a multiple of 8 so few shapes compile."""
  ids = sorted({int(t) for t in stop_tokens})
  width = max(8, -(-len(ids) // 8) * 8)
  return jnp.asarray(ids + [-1] * (width - len(ids)), jnp.int32)


def generate(model: nnx.Module, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             stop_tokens: Sequence[int] = (), pad_id: int = 0) -> GenerationResult:
  """Continue each prompt (a sequence of token ids) by up to `max_new_tokens` tokens.

  `model` is a `DecoderLM`; it is not modified (generation runs on a copy, in eval mode, with its
  own cache). Greedy when `temperature == 0` (then `top_k`, `top_p` are unused); else sampled
  with `top_k` / `top_p` filtering, from `jax.random.key(seed)`. A row ends after it emits any of
  `stop_tokens`. Every input error (token ids, a learned position table too short for prompt + new
  tokens) is a ValueError raised before anything is compiled. One compilation per model structure,
  prompt width, batch size, `max_new_tokens` and greedy-or-not: the sampling options, the seed and
  up to 8 stop tokens are traced.
  """
  check_sampling(temperature=temperature, top_k=top_k, top_p=top_p)
  arrays = _check_inputs(model, prompts, max_new_tokens=max_new_tokens, stop_tokens=stop_tokens,
                         pad_id=pad_id)
  batch = left_pad(arrays, pad_id)
  rows = len(arrays)
  if max_new_tokens == 0:
    empty = np.zeros((rows, 0), np.int32)
    return GenerationResult(empty, np.zeros(rows, np.int32), np.zeros(rows, bool),
                            empty.astype(np.float32), batch.lengths)
  graphdef, state = nnx.split(model)
  work = nnx.merge(graphdef, state)  # a copy: the caller's model keeps its mode and cache
  work.eval()
  work.init_cache(rows, batch.tokens.shape[1] + max_new_tokens - 1)
  graphdef, cache, rest = nnx.split(work, nnx.Cache, ...)
  out = _generate_on_device(
      cache, rest, jnp.asarray(batch.tokens), jnp.asarray(batch.positions),
      jnp.asarray(batch.segment_ids), jax.random.key(seed), _stop_array(stop_tokens),
      jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p), static=_Static(graphdef),
      max_new_tokens=int(max_new_tokens), greedy=temperature == 0, pad_id=int(pad_id))
  tokens, lengths, stopped, logprobs = jax.device_get(out)
  return GenerationResult(np.asarray(tokens), np.asarray(lengths), np.asarray(stopped),
                          np.asarray(logprobs), batch.lengths)


def stop_tokens_of(tokenizer, stop: str = "", *, stop_at_eos: bool = True) -> tuple[int, ...]:
  """Token ids that end a continuation: each character of `stop` (each must be one token) and,
  if `stop_at_eos`, the tokenizer's end-of-document id."""
  ids = {int(tokenizer.eos_id)} if stop_at_eos else set()
  for char in stop:
    encoded = np.asarray(tokenizer.encode(char)).reshape(-1)
    if encoded.size != 1:
      raise ValueError(f"stop character {char!r} is {encoded.size} tokens for this tokenizer; "
                       "each stop character must be exactly one token")
    ids.add(int(encoded[0]))
  return tuple(sorted(ids))


def generate_text(model: nnx.Module, tokenizer, prompts: Sequence[str], *, max_new_tokens: int,
                  temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                  stop: str = "", stop_at_eos: bool = True) -> list[str]:
  """The continuation (text after the prompt, without its stop token) of each prompt string.

  Stop tokens are `stop_tokens_of(tokenizer, stop, stop_at_eos=...)`.
  """
  if isinstance(prompts, str):
    raise ValueError("prompts must be a list of strings, not one string")
  stop_ids = stop_tokens_of(tokenizer, stop, stop_at_eos=stop_at_eos)
  encoded = []
  for i, text in enumerate(prompts):
    ids = np.asarray(tokenizer.encode(text)).reshape(-1)
    if not ids.size:
      raise ValueError(f"prompt {i} ({text!r}) encodes to no tokens: give some text")
    encoded.append(ids)
  result = generate(model, encoded, max_new_tokens=max_new_tokens, temperature=temperature,
                    top_k=top_k, top_p=top_p, seed=seed, stop_tokens=stop_ids,
                    pad_id=tokenizer.pad_id)
  texts = []
  for row, length, stopped in zip(result.tokens, result.lengths, result.stopped):
    texts.append(tokenizer.decode(row[:length - 1 if stopped else length]))
  return texts


# ------------------------------------------------------------------------------------------------
# From a trained run
# ------------------------------------------------------------------------------------------------


def _run(config, workdir: str) -> Run:
  """The run to generate from; `mode=generate` is checked here, the rest by `Run`."""
  if config.model.family != "decoder":
    raise ValueError(f"generation needs model.family=decoder, this run has "
                     f"{config.model.family!r}")
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise ValueError(f"generation needs a trained checkpoint, and {workdir} has none: train "
                     "first or point --workdir at a trained run")
  run = Run(config, workdir)
  if run.checkpointer.latest_step() is None:
    raise ValueError(f"generation needs a trained checkpoint, and {workdir} has none: train "
                     "first or point --workdir at a trained run")
  return run


def _model_from(run: Run) -> nnx.Module:
  """The run's model with the parameters of the workdir's latest checkpoint."""
  step_dir, _ = init_from.resolve_checkpoint(run.workdir)
  abstract = run.trainable.abstract_state
  params = init_from.restore_params(step_dir, abstract.params)
  rest = init_from.restore_params(step_dir, abstract.rest, key="rest")  # dropout RNG state
  build = lambda: models.build(run.family, run.cfg, seed=run.config.seed)
  graphdef, abstract_params, abstract_rest = nnx.split(nnx.eval_shape(build), nnx.Param, ...)
  nnx.replace_by_pure_dict(abstract_params, params)
  nnx.replace_by_pure_dict(abstract_rest, rest)
  model = nnx.merge(graphdef, abstract_params, abstract_rest)
  model.eval()
  return model


def load_for_generation(workdir: str, config=None) -> nnx.Module:
  """A trained run's `DecoderLM` (built from its recorded config, or `config`, which must agree
  with the record; parameters from the workdir's latest checkpoint), in eval mode, ready for
  `generate`."""
  return _model_from(_run(config if config is not None else _recorded(workdir), workdir))


def _recorded(workdir: str):
  config = record.read_run_config(workdir)
  if config is None:
    raise ValueError(f"{workdir} has no {record.CONFIG_FILE}: pass the run's config")
  return config


def split_prompts(text: str) -> list[str]:
  """`config.generate.prompt`: several prompts separated by `|`."""
  return text.split("|")


def run_from_config(config, workdir: str) -> list[str]:
  """`mode=generate`: print the continuation of each of `config.generate.prompt`'s prompts."""
  gen = config.generate  # declared in configs/lm.py
  if gen.max_new_tokens < 1 or gen.temperature < 0 or gen.top_k < 0 or not 0 < gen.top_p <= 1:
    raise ValueError(f"config.generate needs max_new_tokens ≥ 1, temperature ≥ 0, top_k ≥ 0 and "
                     f"0 < top_p ≤ 1; got {gen.max_new_tokens}, {gen.temperature}, {gen.top_k}, "
                     f"{gen.top_p}")
  run = _run(config, workdir)
  model = _model_from(run)
  prompts = split_prompts(gen.prompt)
  texts = generate_text(model, run.tokenizer, prompts, max_new_tokens=gen.max_new_tokens,
                        temperature=gen.temperature, top_k=gen.top_k, top_p=gen.top_p,
                        seed=gen.seed, stop=gen.stop)
  step = run.checkpointer.latest_step()
  for i, (prompt, text) in enumerate(zip(prompts, texts)):
    if jax.process_index() != 0:  # every process generates the same text; one prints it
      break
    print(f"\n=== generation {i + 1}/{len(prompts)} ({config.model.pe}, step {step}) ===\n"
          f"{prompt}{text}", flush=True)
  return texts
