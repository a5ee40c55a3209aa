"""Why a passkey score is zero: can the model not find the key, or not write digits?

  python -m experiments.context_extension.passkey_probe --workdir=runs/rope \
      [--multipliers=1,4] [--scalings=none,dynamic,yarn] \
      [--finetunes=finetune_512,finetune_512_linear] [--trials=4]

For passkey prompts (`posjax.data.passkey.make_prompt`, depths 0..1) it reads the model's
next-token distribution at each scored answer digit (teacher-forced) and reports, per method and
length:

  digit_mass      the probability the model puts on the ten digit tokens at all,
  digit_accuracy  the passkey score's per-digit accuracy (argmax over the whole vocabulary),
  among_digits    accuracy of the argmax over the ten digits only (chance: 0.1): retrieval
                  with the output vocabulary taken out of the question,
  echo_among      the same for the key's second copy inside the key sentence ("... 71432.
                  Remember it. 71432 is ..."), where the first copy is ~20 tokens back.

The base run and the fine-tunes (`<workdir>/context_extension/<name>`) are read as they were
trained, from their recorded configs. Writes `<workdir>/context_extension/passkey_probe.{csv,md}`.
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags

from posjax.run import distributed

_WORKDIR = flags.DEFINE_string("workdir", None, "The base run's directory.")
_MULT = flags.DEFINE_list("multipliers", "1,4", "Prompt lengths, × data.seq_len.")
_SCALINGS = flags.DEFINE_list("scalings", "none,dynamic,yarn",
                              "Scalings of the base run (factor: the longest multiplier).")
_FINETUNES = flags.DEFINE_list("finetunes", "", "Fine-tune directories under context_extension/.")
_TRIALS = flags.DEFINE_integer("trials", 4, "Keys per depth.")
flags.mark_flags_as_required(["workdir"])

DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def logits_fn(run, pe_options):
  """`tokens_NW -> log-probabilities [N, W, V]` of the run's parameters with `pe_options`."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from posjax import models
  from posjax.run import steps
  cfg = run.cfg.replace(pe_options=pe_options, attention_backend="chunked")
  _, graphdef, _, _ = steps.split_model(
      nnx.eval_shape(lambda: models.build(run.run.family, cfg, seed=run.config.seed)))

  @jax.jit
  def forward(params, rest, batch):
    logits, _ = steps.forward(graphdef, params, rest, batch)
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)

  def call(tokens):
    n, w = tokens.shape
    batch = {"inputs": tokens, "targets": tokens,
             "positions": np.broadcast_to(np.arange(w, dtype=np.int32), (n, w)),
             "segment_ids": np.ones((n, w), np.int32)}
    return np.asarray(jax.device_get(forward(run.params, run.rest, batch)))
  return call


def probe(call, tokenizer, length: int, trials: int) -> dict:
  from posjax.data import passkey
  digits = np.asarray([tokenizer.encode(str(d))[0] for d in range(10)])
  prompts = [passkey.make_prompt(tokenizer, length, d, k) for d in DEPTHS
             for k in passkey.passkey_keys(trials)]
  logp = np.concatenate([call(np.stack([p.tokens[:-1] for p in prompts[i:i + 4]]))
                         for i in range(0, len(prompts), 4)])
  mass, full, among, echo = [], [], [], []
  for row, p in enumerate(prompts):
    for pos in p.answer_positions:  # predicted at pos - 1
      lp = logp[row, pos - 1]
      mass.append(np.exp(lp[digits]).sum())
      full.append(np.argmax(lp) == p.tokens[pos])
      among.append(digits[np.argmax(lp[digits])] == p.tokens[pos])
    # The key's second copy in the key sentence: its digits start after "Remember it. ".
    sentence = p.tokens[p.key_start:p.key_start + p.key_len]
    key_ids = np.asarray(tokenizer.encode(p.key))
    starts = [i for i in range(len(sentence) - len(key_ids) + 1)
              if np.array_equal(sentence[i:i + len(key_ids)], key_ids)]
    for i in range(len(key_ids)):
      pos = p.key_start + starts[1] + i
      lp = logp[row, pos - 1]
      echo.append(digits[np.argmax(lp[digits])] == p.tokens[pos])
  return {"length": length, "prompts": len(prompts), "digit_mass": float(np.mean(mass)),
          "digit_accuracy": float(np.mean(full)), "among_digits": float(np.mean(among)),
          "echo_among": float(np.mean(echo))}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  distributed.single_process("experiments.context_extension.passkey_probe")  # before JAX is used
  from posjax.evaluate import context_extension as ce
  from posjax.evaluate import extrapolation, report
  workdir = _WORKDIR.value
  out_dir = os.path.join(workdir, "context_extension")
  run = extrapolation.load_run(workdir)
  lengths = [int(round(run.train_len * float(m))) for m in _MULT.value]
  factor = max(lengths) / run.train_len
  rows = []
  for method in _SCALINGS.value:
    options = ce.scaled_pe_options(run.cfg.pe, run.cfg.pe_options,
                                   None if method == "none" else method, factor, run.train_len)
    call = logits_fn(run, options)
    rows += [{"method": method, **probe(call, run.run.tokenizer, n, _TRIALS.value)}
             for n in lengths]
  for name in _FINETUNES.value:
    ft_run = extrapolation.load_run(os.path.join(out_dir, name))
    call = logits_fn(ft_run, ft_run.cfg.pe_options)
    rows += [{"method": name, **probe(call, run.run.tokenizer, n, _TRIALS.value)}
             for n in lengths]
  report.write_csv(os.path.join(out_dir, "passkey_probe.csv"), rows)
  md = report.write_markdown(os.path.join(out_dir, "passkey_probe.md"), rows,
                             title="Passkey probe: retrieval vs writing digits")
  print(open(md).read(), flush=True)


if __name__ == "__main__":
  app.run(main)
