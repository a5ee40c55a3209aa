"""grain pipelines: host-local batches of fixed-length rows for LM and MLM.

By default (the embedded corpus, text files) a split's documents are tokenized once, cut into
windows and packed into rows (`packing.py`); the rows are then a grain `MapDataset`: shuffled with
the data seed (a fresh permutation every epoch), repeated, dealt round-robin to processes and
batched. Every step is index-based, so the same seed gives the same batches and the iterator's
state is just the next batch index. TFDS catalog datasets stream instead (`streaming.py`).

  it = make_lm_dataset(config.data, split="train", seq_len=128, batch_size=32, tokenizer=tok)
  batch = next(it)               # {inputs, targets, positions, segment_ids, weights}: [b, L]
  state = it.get_state()         # a small JSON-able dict; it.set_state(state) resumes exactly
  # with Orbax: grain.checkpoint.CheckpointSave(it) / grain.checkpoint.CheckpointRestore(it)

`inputs`, `targets`, `positions`, `segment_ids` are int32 and `weights` float32, all
`[batch_size, seq_len]` (`batch_size` is per process). Segment ids count 1, 2, ... within a row
(0 = padding), positions restart at 0 in each segment, and weights are 1 wherever there is a
target (0 on padding). For LM, `targets` are the next tokens of the same document.

Evaluation at several lengths: `make_lm_dataset(split="validation", seq_len=k * L, shuffle=False,
repeat=False, drop_remainder=False)` cuts the same validation documents (in their documented
order) into non-overlapping windows of k*L inputs; every token of every document but its first is
a target exactly once, whatever k. Windows come first, in document order, then the rows that pack
each document's leftover tail; the last batch is padded with empty rows (weight 0). So with no
limit on batches each length scores exactly the same text; if the evaluation stops after n
batches of b rows, length kL has scored the first n*b*kL tokens of the validation stream (a prefix
that grows with k, as long as the windows last).
"""

from __future__ import annotations

import grain

from posjax.data import masking, packing, sources
from posjax.data.passkey import PasskeyRows
from posjax.data import streaming as stream_lib
from posjax.data.tokenizers import check_token_ids

_MASK_SEED_SALT = 0x6D61736B  # keeps the masking stream apart from the shuffling one
_PASSKEY_SEED_SALT = 0x706B6579  # and the passkey mixture's


def _in_memory_dataset(documents, tokenizer, *, split, seq_len, batch_size, seed, shuffle,
                       repeat, process_index, process_count, drop_remainder, shift,
                       read_options, mask=None, passkey=None) -> grain.IterDataset:
  """Batches of the split's rows, tokenized and packed in memory (see `packing.py`). `mask`
  (MLM) masks each row, and `passkey` (a `PasskeyRows`) may replace it by a passkey prompt, with
  a seed of its place in the global stream, before the rows are dealt to processes, so neither
  depends on the number of processes."""
  store = packing.tokenize_documents(documents, tokenizer)
  check_token_ids(store.tokens, tokenizer.vocab_size, what="tokenized documents")
  rows = packing.cut_and_pack(store.doc_bounds, seq_len, shift=shift)
  if not len(rows):
    raise ValueError(f"split {split!r} has no text to make rows of length {seq_len}")
  global_batch = batch_size * process_count
  num_rows = len(rows)
  if not repeat:
    if drop_remainder:
      if num_rows < global_batch:
        raise ValueError(f"split {split!r} makes {num_rows} rows of length {seq_len}, fewer than "
                         f"one global batch of {global_batch}: use drop_remainder=False or a "
                         "smaller batch")
      # Whole global batches only, so every process gets the same number of batches.
      usable = num_rows // global_batch * global_batch
    else:
      usable = num_rows = -(-num_rows // global_batch) * global_batch  # padded with empty rows
  dataset = grain.MapDataset.range(num_rows)
  if shuffle:
    dataset = dataset.shuffle(seed=seed)
  if repeat:
    dataset = dataset.repeat(None)
  else:
    dataset = dataset[:usable]
  dataset = dataset.map(packing.RowMaker(store, rows, tokenizer.pad_id))
  if mask is not None:
    dataset = dataset.random_map(mask, seed=(seed ^ _MASK_SEED_SALT) % 2**31)
  if passkey is not None:
    dataset = dataset.random_map(passkey, seed=(seed ^ _PASSKEY_SEED_SALT) % 2**31)
  dataset = dataset[process_index::process_count]
  dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
  return dataset.to_iter_dataset(read_options)


def make_lm_dataset(data_config, *, split: str, seq_len: int, batch_size: int, tokenizer,
                    seed: int | None = None, shuffle: bool = True, repeat: bool = True,
                    process_index: int = 0, process_count: int = 1,
                    drop_remainder: bool = True, mlm: bool = False,
                    mlm_probability: float | None = None, documents=None,
                    streaming: bool | None = None,
                    passkey_fraction: float = 0.0) -> grain.DatasetIterator:
  """An iterator over this process's batches of `split` (see the module docstring).

  Args:
    data_config: `config.data` (name, path, text_key, seed, mlm_probability, num_workers).
    split: train, validation or test (text sources: train or validation).
    seq_len: row length L.
    batch_size: rows per batch on THIS process (host-local; the global batch is
      `batch_size * process_count`).
    tokenizer: from `get_tokenizer`.
    seed: data order (and MLM masks); default `data_config.seed`.
    shuffle: a fresh permutation of the rows every epoch.
    repeat: loop forever; otherwise one pass.
    process_index, process_count: this host's shard (rows are dealt round-robin after
      shuffling, so processes see disjoint rows that together make up each epoch).
    drop_remainder: drop a last partial batch; if False it is padded with empty rows (weight 0),
      and the rows are padded so that every process gets the same number of batches.
    mlm: masked-LM batches (targets are the original tokens, not shifted; `weights` 1 on the
      masked positions only; see `masking.py`).
    mlm_probability: default `data_config.mlm_probability`.
    documents: a sequence of str to use instead of the split of `data_config` (tests, notebooks).
    streaming: stream documents instead of tokenizing the split in memory (`streaming.py`);
      default `data_config.streaming` if the config has it, else True exactly for TFDS catalog
      datasets (names other than shakespeare and text).
    passkey_fraction: LM only: this fraction of the rows replaced by passkey prompts of `seq_len`
      inputs (`posjax.data.passkey.PasskeyRows`; a training mixture that teaches retrieval;
      keys of 5 to `data_config.passkey_max_digits` digits); not for streamed datasets.

  `data_config.num_workers` sets the number of threads that make batches ahead (at least 1);
  `2 * num_workers` batches are prefetched.

  Returns:
    A `grain.DatasetIterator` of numpy dicts, with `get_state()` / `set_state()`.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
  if batch_size < 1 or seq_len < 1:
    raise ValueError(f"batch_size and seq_len must be positive, got {batch_size} and {seq_len}")
  if seed is None:
    seed = int(data_config.seed)
  if streaming is None:
    streaming = data_config.streaming
  if streaming is None:
    name = data_config.name
    streaming = name not in sources.SOURCE_NAMES
  if documents is None:
    documents = sources.documents(data_config, split)
  num_threads = max(1, int(data_config.num_workers))
  options = dict(seq_len=seq_len, batch_size=batch_size, seed=seed, shuffle=shuffle,
                 repeat=repeat, process_index=process_index, process_count=process_count,
                 drop_remainder=drop_remainder, shift=0 if mlm else 1,
                 read_options=grain.ReadOptions(num_threads=num_threads,
                                                prefetch_buffer_size=2 * num_threads))
  mask = None
  if mlm:
    probability = mlm_probability
    if probability is None:
      probability = float(data_config.mlm_probability)
    mask = masking.MaskBatch(vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id,
                             special_ids=tokenizer.special_ids, probability=probability)
  passkey = None
  if passkey_fraction:
    if mlm or streaming:
      raise ValueError("data.passkey_fraction mixes passkey prompts into next-token (task=lm) "
                       "rows of an in-memory dataset, not into masked-LM or streamed ones")
    passkey = PasskeyRows(tokenizer, seq_len, passkey_fraction,
                          int(data_config.passkey_max_digits))
  if streaming:
    dataset = stream_lib.streaming_dataset(documents, tokenizer, **options)
    if mask is not None:  # each process streams its own documents: its own masks too
      dataset = dataset.random_map(
          mask, seed=(seed ^ _MASK_SEED_SALT ^ (process_index << 20)) % 2**31)
  else:
    dataset = _in_memory_dataset(documents, tokenizer, split=split, mask=mask, passkey=passkey,
                                 **options)
  return iter(dataset)


def make_mlm_dataset(data_config, **kwargs) -> grain.DatasetIterator:
  """`make_lm_dataset(..., mlm=True)`: rows of L tokens with BERT masking."""
  return make_lm_dataset(data_config, mlm=True, **kwargs)
