"""Decoder-only language-model pretraining.

  python -m posjax.main --config=configs/lm.py --workdir=runs/lm
  python -m posjax.main --config=configs/lm.py:alibi --workdir=runs/alibi
  python -m posjax.main --config=configs/lm.py:tiny --workdir=/tmp/t   # seconds; used by the tests

The argument is a comma-separated list: a positional scheme name (any of
`posjax.encodings.names()`) and/or `tiny`. Every field can be overridden on the command line,
e.g. `--config.model.pe=rope --config.train.steps=2000`.
"""

import ml_collections
from ml_collections.config_dict import placeholder

from posjax import encodings


def get_config(arg=None):
  words = [w for w in (arg or "").split(",") if w]
  config = ml_collections.ConfigDict()
  config.mode = "train_and_eval"      # train, eval, train_and_eval, or generate (from the
                                      # workdir's checkpoint, with config.generate)
  config.seed = 0                     # model initialisation and dropout
  config.task = "lm"                  # lm (next token) or mlm (masked tokens)

  config.model = ml_collections.ConfigDict(dict(
      family="decoder",               # decoder (posjax.models.FAMILIES)
      vocab_size=0,                   # 0: the tokenizer's vocabulary size
      dim=192,                        # model width
      num_layers=4,
      num_heads=4,
      num_kv_heads=0,                 # 0: as many as num_heads (no grouped-query attention)
      head_dim=0,                     # 0: dim // num_heads
      mlp_dim=0,                      # 0: 4 * dim
      activation="gelu",              # gelu, gelu_tanh, relu, silu, swiglu, geglu, reglu
      norm="layernorm",               # layernorm or rmsnorm
      norm_position="pre",            # pre or post
      dropout=0.0,
      tie_embeddings=True,
      embed_scale=0.0,                # token embeddings × this; 0: √dim (Vaswani et al. 2017),
                                      # so an additive positional term does not swamp them
      pe="rope",                      # positional scheme, by name
      pe_options="{}",                # the scheme's options as JSON, e.g. '{"max_len": 1024}'
                                      # (a string, so the command line can set nested options)
      pe_shared=False,                # one positional module for all layers (T5-style)
      attention_backend="auto",       # auto, xla, chunked, cudnn
      remat=False,                    # rematerialize blocks in the backward pass
      dtype="float32",                # compute dtype: float32 or bfloat16 (parameters stay f32)
      # Pretrained word vectors for the token embedding (posjax.run.word_vectors; needs
      # data.tokenizer=word). Read when the parameters are initialised; entries the file lacks
      # keep their random rows; the coverage is logged.
      word_vectors="",                # a word2vec (text or binary) or GloVe file ("": none);
                                      # its dimension must equal model.dim
      word_vectors_format="auto",     # auto, word2vec_text, word2vec_binary or glove
      word_vectors_lowercase=True,    # an entry missing from the file takes the vector of the
                                      # same word in another case
      word_vectors_std=0.02,          # rescale the loaded vectors to this std (that of the random
                                      # rows); 0: as in the file
      freeze_word_vectors=False,      # True: the token embedding never trains (uncovered rows
                                      # stay random too); False: the vectors are fine-tuned
  ))

  config.data = ml_collections.ConfigDict(dict(
      name="shakespeare",             # shakespeare (embedded), text (a file or folder), or a TFDS
                                      # catalog name such as lm1b (needs the network)
      path="",                        # for name=text: a .txt file or a folder of them
      data_dir="",                    # TFDS data directory ("": TFDS's default)
      streaming=placeholder(bool),    # read documents as a stream (None: automatic, True for
                                      # TFDS catalog datasets, False for shakespeare and text)
      text_key="text",                # for TFDS catalog datasets: the feature holding the text
      tokenizer="byte",               # byte; sentencepiece / bpe trained on the training split;
                                      # or word: whole words from the training split
                                      # (posjax.data.word_tokenizer)
      vocab_size=0,                   # for a trained tokenizer; 0 for byte; for word, a cap on
                                      # the vocabulary, specials included (0: no cap)
      min_count=1,                    # word: a word enters the vocabulary from this many
                                      # occurrences (rarer ones become [UNK])
      lowercase=True,                 # word: lower-case the text (False: keep case)
      truncation="end",               # word: a labelled example too long for seq_len loses its
                                      # end (end) or its start (start); rows are padded at the end
      seq_len=128,                    # training length L
      global_batch_size=16,           # sequences per step, summed over all devices and hosts
      seed=0,                         # data order, separate from the model seed
      num_workers=0,                  # grain worker processes (0: in the main process)
      mlm_probability=0.15,           # for task=mlm
      passkey_fraction=0.0,           # task=lm: this fraction of the training rows replaced by
                                      # passkey prompts (posjax.data.passkey), to learn retrieval
      passkey_max_digits=5,           # the mixture's keys have 5 to this many digits (more: more to
                                      # copy per prompt; evaluation keys have 5)
  ))

  config.train = ml_collections.ConfigDict(dict(
      steps=1500,
      learning_rate=3e-3,
      warmup_steps=100,
      schedule="cosine",              # cosine or linear decay after warmup, to end_lr_fraction
      end_lr_fraction=0.1,
      weight_decay=0.1,               # not on biases, norms, embeddings or positional parameters
      b1=0.9,
      b2=0.95,
      grad_clip_norm=1.0,
      grad_accum_steps=1,             # micro-batches per optimizer step
      log_every=50,
      eval_every=500,
      checkpoint_every=500,
      keep_checkpoints=2,             # most recent checkpoints kept
      best_metric="eval/loss",        # also keep the best checkpoint by this ("" to disable)
      best_mode="min",                # min (loss-like best_metric) or max (accuracy-like)
      early_stopping_patience=0,      # evaluations without improvement before stopping (0: off)
      init_from="",                   # a checkpoint directory: parameters only (fine-tuning);
                                      # {seed} becomes config.seed (runs/base/seed_{seed})
      init_from_hf="",                # or a Hugging Face BERT directory (config.json, weights,
                                      # vocab.txt): its model config and WordPiece vocabulary
                                      # replace config.model and data.tokenizer
  ))

  config.peft = ml_collections.ConfigDict(dict(  # which parameters train (posjax.nn.peft)
      method="full",                  # one of posjax.nn.peft.METHODS; full: all of them
      freeze_layers=2,                # freeze_bottom: the bottom k blocks (and embeddings) frozen
      lora_rank=8,
      lora_alpha=16.0,
      lora_targets="query,value",     # among query, key, value, out, wi, wg, wo
      adapter_dim=16,                 # bottleneck width of each adapter
      prompt_length=16,               # soft-prompt vectors
  ))

  config.eval = ml_collections.ConfigDict(dict(
      length_multipliers=(1, 4, 8),   # validation perplexity at these multiples of seq_len
      num_batches=32,                 # at seq_len; at k × seq_len, num_batches / k, so every
                                      # length scores the same text (0: the whole split)
      batch_size=8,
      passkey_trials=0,               # task=lm: each validation also scores passkey retrieval at
                                      # seq_len (this many evaluation keys at each of 5 depths):
                                      # eval/passkey_accuracy (0: not scored)
  ))

  config.generate = ml_collections.ConfigDict(dict(  # mode=generate
      prompt="ROMEO:",                # text to continue; `|` separates several prompts
      max_new_tokens=200,             # tokens generated per prompt, at most
      temperature=0.8,                # 0: greedy
      top_k=0,                        # sample from the k most likely tokens only (0: all)
      top_p=0.95,                     # nucleus: the most likely tokens holding this mass (1: all)
      seed=0,                         # sampling seed
      stop="",                        # characters that end a continuation, e.g. "\n" (eos always)
  ))

  config.mesh = ml_collections.ConfigDict(dict(
      data=-1,                        # data-parallel axis; -1: all devices left over
      fsdp=1,                         # parameters and optimizer state sharded over this axis
      tensor=1,                       # heads and MLP width sharded over this axis
  ))

  for word in words:
    if word == "tiny":
      config.model.update(dim=32, num_layers=2, num_heads=4, mlp_dim=64)
      config.data.update(seq_len=32, global_batch_size=8)
      config.train.update(steps=6, warmup_steps=2, log_every=2, eval_every=3,
                          checkpoint_every=3)
      config.eval.update(num_batches=1, batch_size=8, length_multipliers=(1, 2))
    elif word in encodings.names():
      config.model.pe = word
      if word == "learned":
        config.model.pe_options = '{"max_len": 1024}'
    else:
      raise ValueError(f"unknown config argument {word!r}: use 'tiny' or a scheme name "
                       f"({', '.join(encodings.names())})")
  return config
