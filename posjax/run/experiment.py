"""A run: everything built from a config for one workdir — objective, tokenizer, model, mesh,
jitted steps and checkpoints — before anything is compiled.

`Run(config, workdir)` raises every input error (config, data, a config that contradicts the
run recorded in the workdir) from its constructor. `Run.from_workdir(workdir)` rebuilds a run as
it was trained, from its `config.json`. The training loop (`posjax.train.loop`), the final report
and the studies (`posjax.evaluate`) all start from a `Run`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import jax
import numpy as np
from absl import logging

from posjax import configs
from posjax.data.tokenizers import check_token_ids
from posjax.nn import peft
from posjax.run import checkpointing, init_from, objectives, pretrained, record, sharding
from posjax.run import word_vectors
from posjax.run.config import check_run, model_config
from posjax.run.steps import TrainState
from posjax.run.trainable import make_trainable


class Run:
  """Model, optimizer, mesh, data and steps for one run, from its `ConfigDict`.

  Args:
    config: the run's config.
    workdir: its directory.
    allow_changes: training fields that may differ from the run recorded in `workdir` (True: any;
      see `posjax.run.record`); by default a difference is an error listing the fields.
  """

  def __init__(self, config, workdir: str, *, allow_changes: record.AllowChanges = False):
    self.config, self.workdir = config, workdir
    self.changes = record.check(workdir, config, allow_changes=allow_changes)
    self.objective = objectives.for_config(config)
    self.hf_dir = config.train.init_from_hf
    if self.hf_dir:  # fine-tuning a Hugging Face BERT: its config and vocabulary
      self.tokenizer, self.cfg = pretrained.hf_backbone(config.model, self.hf_dir)
    else:
      self.tokenizer = self.objective.tokenizer()
      self.cfg = model_config(config, self.tokenizer.vocab_size)
    self.mesh = sharding.make_mesh(config.mesh)
    shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
    check_run(config, dict(self.mesh.shape), self.objective.problems(self.cfg, shards))
    self.family = config.model.family
    self.peft = peft.PeftConfig.from_config(config.peft)
    self.peft.validate(self.cfg.num_layers)
    self.word_vectors = word_vectors.options(config)  # model.word_vectors (None: not used)
    if self.word_vectors is not None and self.word_vectors.freeze:
      self.peft = dataclasses.replace(self.peft, freeze_token_embedding=True)
    self.trainable = make_trainable(self.family, self.cfg, config.train, self.mesh,
                                    seed=config.seed, peft_config=self.peft,
                                    loss=self.objective.loss,
                                    **self.objective.head_options())
    self.checkpointer = checkpointing.Checkpointer(
        workdir, keep=config.train.keep_checkpoints, best_metric=config.train.best_metric or None,
        best_mode=config.train.best_mode)
    if self.word_vectors is not None and self.checkpointer.latest_step() is None:
      word_vectors.check(self.word_vectors, self.tokenizer, self.cfg.dim)  # read at init_state

  @classmethod
  def from_workdir(cls, workdir: str, overrides: Optional[Mapping[str, Any]] = None, *,
                   allow_changes: record.AllowChanges = False) -> "Run":
    """The run recorded in `workdir`, with `{"dotted.field": value}` overrides (evaluation
    options freely; training fields only as `allow_changes` allows)."""
    config = record.read_run_config(workdir)
    if config is None:
      raise ValueError(f"{workdir} has no {record.CONFIG_FILE}: it is not a posjax run directory "
                       "(or predates run records: pass its config to Run(config, workdir))")
    for dotted, value in (overrides or {}).items():
      configs.set_field(config, dotted, value)
    return cls(config, workdir, allow_changes=allow_changes)

  # State --------------------------------------------------------------------------------------

  def init_state(self) -> TrainState:
    """Fresh parameters, created already sharded (no full copy on one device)."""
    state = self.trainable.create()
    if self.word_vectors is not None:
      state = state.replace(params=word_vectors.initialise(
          state.params, self.word_vectors, self.tokenizer,
          tied=self.cfg.tie_embeddings and self.family in ("decoder", "mlm", "encoder_decoder"),
          log_path=f"{self.workdir}/train.log" if jax.process_index() == 0 else None))
    source = init_from.source_path(self.config.train.init_from, self.config.seed)
    abstract_params = self.trainable.abstract_state.params
    if source and isinstance(self.objective, objectives.LanguageModeling):  # the same model
      state = state.replace(params=init_from.restore_params(source, abstract_params))
      logging.info("parameters initialised from %s", source)
    elif self.hf_dir:
      loaded, fresh = pretrained.hf_params(self.hf_dir, self.family, abstract_params,
                                           source_path=peft.pretrained_path)
      state = state.replace(params=self._fill(state.params, loaded))
      logging.info("init_from_hf %s: %d tensors loaded; initialised afresh: %s", self.hf_dir,
                   len(loaded), ", ".join(fresh) or "none")
    elif source:  # fine-tuning: the backbone from a pretraining run, the head fresh
      loaded, fresh, unused = init_from.restore_pretrained(source, abstract_params,
                                                           source_path=peft.pretrained_path)
      state = state.replace(params=self._fill(state.params, loaded))
      logging.info("init_from %s: %d tensors loaded; initialised afresh: %s; unused in the "
                   "checkpoint: %s", source, len(loaded), ", ".join(fresh) or "none",
                   ", ".join(unused) or "none")
    return state

  def _fill(self, params, loaded: dict):
    """`params` with the leaves named in `loaded` (by path) replaced, on the same shardings."""
    def pick(path, x):
      value = loaded.get(checkpointing.path_name(path))
      if value is None:
        return x
      if isinstance(value, jax.Array):  # restored onto the mesh: may span processes
        return jax.device_put(value.astype(x.dtype), x.sharding)
      return jax.device_put(np.asarray(value, x.dtype), x.sharding)
    return jax.tree_util.tree_map_with_path(pick, params)

  def restore(self, step: Optional[int] = None, *, to_resume: bool = False):
    """`(state, data_state)` of checkpoint `step` (default: the latest); see
    `Checkpointer.restore`."""
    return self.checkpointer.restore(self.trainable.abstract_state, step, to_resume=to_resume)

  def restore_or_init(self):
    """`(state, data_state)`: the latest checkpoint of the workdir to resume, or a fresh state."""
    if self.checkpointer.latest_step() is not None:
      state, data_state = self.restore(to_resume=True)
      logging.info("resumed from step %d in %s", int(state.step), self.workdir)
      return state, data_state
    return self.init_state(), None

  # Data ---------------------------------------------------------------------------------------

  def dataset(self, split: str, seq_len: int, batch_size: int, *, train: bool):
    """This process's batches of `split` (shuffled and repeated for training): its share of
    each global batch (`sharding.batch_share`)."""
    index, count = sharding.batch_share(self.mesh)
    return self.objective.dataset(
        self.tokenizer, split, seq_len, batch_size=batch_size // count,
        seed=self.config.data.seed, shuffle=train, repeat=train,
        process_index=index, process_count=count, drop_remainder=train)

  def global_batch(self, host_batch):
    """A host batch as global arrays on the mesh, its token ids checked against the model's
    vocabulary first (an out-of-range id would read a clamped row, or NaN, silently)."""
    check_token_ids(host_batch["inputs"], self.cfg.vocab_size, what="the batch's input ids")
    # Evaluation batches arrive full: the pipeline pads a short last batch with weightless rows.
    return sharding.global_batch(host_batch, self.mesh)

  def validate(self, state) -> dict[str, float]:
    """The periodic validation metrics (`eval/...`) at the training length."""
    return self.objective.validate(self, state)
