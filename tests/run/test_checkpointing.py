"""Checkpointer: sharded round trip, retention (last N plus best), data state, errors, SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal

import flax
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from posjax.run import checkpointing, init_from, preemption
from posjax.run.checkpointing import Checkpointer


def _abstract(tree):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)


def _state(scale=1.0):
  return {"params": {"blocks": {0: {"kernel": jnp.full((4, 3), scale)},
                                1: {"kernel": jnp.full((4, 3), 2 * scale)}},
                     "embedding": jnp.arange(6.0).reshape(3, 2) * scale},
          "step": jnp.int32(7), "rng": jax.random.key(3)}


def test_sharded_round_trip(tmp_path):
  mesh = jax.make_mesh((8,), ("data",), devices=jax.devices()[:8])
  sharded = jax.device_put(jnp.arange(32.0).reshape(16, 2), NamedSharding(mesh, P("data")))
  state = dict(_state(), opt={"mu": sharded})
  with Checkpointer(tmp_path, keep=2, best_metric="") as ckpt:
    assert ckpt.latest_step() is None
    assert ckpt.save(5, state)
    ckpt.wait()
    assert ckpt.latest_step() == 5
    # Ask for a different sharding than the one saved: the restore must follow the request.
    target = NamedSharding(mesh, P(None, None))
    abstract = _abstract(state)
    abstract["opt"]["mu"] = jax.ShapeDtypeStruct((16, 2), jnp.float32, sharding=target)
    restored, data_state = ckpt.restore(abstract)
  assert data_state is None
  assert restored["opt"]["mu"].sharding == target
  np.testing.assert_array_equal(restored["opt"]["mu"], sharded)
  np.testing.assert_array_equal(restored["params"]["blocks"][1]["kernel"], 2.0)
  assert int(restored["step"]) == 7
  np.testing.assert_array_equal(jax.random.key_data(restored["rng"]),
                                jax.random.key_data(state["rng"]))


@flax.struct.dataclass
class _TrainState:
  step: jax.Array
  params: dict
  opt_state: tuple


def test_train_state_with_optimizer_round_trip(tmp_path):
  # What the loop saves: a struct dataclass holding params and an optax state (named tuples,
  # masked weight decay's empty nodes); restore_params reads back its `params` field.
  params = _state()["params"]
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adamw(1e-3, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)))
  opt_state = tx.update(params, tx.init(params), params)[1]
  state = _TrainState(jnp.int32(1), params, opt_state)
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state)
    ckpt.wait()
    restored, _ = ckpt.restore(_abstract(state))
  assert isinstance(restored, _TrainState)
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(a, b)
  only_params = init_from.restore_params(tmp_path, _abstract(params))
  assert jax.tree.structure(only_params) == jax.tree.structure(params)


def test_keeps_last_n_plus_best(tmp_path):
  losses = {1: 3.0, 2: 1.0, 3: 2.5, 4: 2.0, 5: 1.5}  # best is step 2, older than the last two
  with Checkpointer(tmp_path, keep=2, best_metric="eval/loss", best_mode="min") as ckpt:
    for step, loss in losses.items():
      ckpt.save(step, _state(step), metrics={"eval/loss": loss, "train/loss": 9.0})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 4, 5]
    assert ckpt.best_step() == 2
    restored, _ = ckpt.restore(_abstract(_state()), step=2)
    np.testing.assert_array_equal(restored["params"]["embedding"], np.arange(6.0).reshape(3, 2) * 2)
  # A new best replaces the old one; reopening the directory reads the stored metrics.
  with Checkpointer(tmp_path, keep=2, best_metric="eval/loss") as ckpt:
    ckpt.save(6, _state(), metrics={"eval/loss": 0.5})
    ckpt.save(7, _state(), metrics={"eval/loss": float("nan")})
    ckpt.wait()
    assert ckpt.all_steps() == [6, 7]
    assert ckpt.best_step() == 6


def test_max_mode(tmp_path):
  with Checkpointer(tmp_path, keep=1, best_metric="eval/acc", best_mode="max") as ckpt:
    for step, acc in ((2, 0.9), (4, 0.5), (6, 0.7)):
      assert ckpt.save(step, _state(), metrics={"eval/acc": acc})
    assert not ckpt.save(6, _state())                  # already there
    ckpt.wait()
    assert ckpt.all_steps() == [2, 6]


def test_loop_state_round_trip(tmp_path):
  loop_state = {"early_stopping": {"metric": "eval/loss", "mode": "min", "best": 1.5,
                                   "evaluations_since_best": 2}}
  with Checkpointer(tmp_path, best_metric="") as ckpt:
    assert ckpt.loop_state() == {}                       # no checkpoint yet
    ckpt.save(1, _state())                   # one saved without loop state
    ckpt.save(2, _state(), loop_state=loop_state)
    ckpt.wait()
    assert ckpt.loop_state(1) == {}
    assert ckpt.loop_state() == ckpt.loop_state(2) == loop_state
    _, data_state = ckpt.restore(_abstract(_state()))   # for evaluation: no data state needed
    assert data_state is None
    with pytest.raises(ValueError, match=r"checkpoints/2 is damaged: it has no data_state/ "
                                         r".*to resume from step 1"):
      ckpt.restore(_abstract(_state()), to_resume=True)


def _loader():
  return grain.DataLoader(
      data_source=list(range(40)),
      sampler=grain.samplers.IndexSampler(40, shuffle=True, seed=4, num_epochs=1),
      worker_count=0)


def test_data_state_round_trip(tmp_path):
  iterator = iter(_loader())
  seen = [next(iterator) for _ in range(5)]
  state_bytes = iterator.get_state()
  assert isinstance(state_bytes, bytes)
  expected_next = [next(iterator) for _ in range(6)]
  dataset_iter = iter(grain.MapDataset.range(10).shuffle(seed=1).to_iter_dataset())
  next(dataset_iter)
  with Checkpointer(tmp_path, best_metric="") as ckpt:
    ckpt.save(1, _state(), data_state=state_bytes, loop_state={})
    ckpt.save(2, _state(), data_state=dataset_iter.get_state(), loop_state={})
    ckpt.wait()
    _, restored_bytes = ckpt.restore(_abstract(_state()), step=1, to_resume=True)
    _, restored_dict = ckpt.restore(_abstract(_state()), step=2, to_resume=True)
  assert restored_bytes == state_bytes
  assert restored_dict == dataset_iter.get_state()
  resumed = iter(_loader())
  resumed.set_state(restored_bytes)
  assert [next(resumed) for _ in range(6)] == expected_next
  assert seen[0] not in expected_next


def test_restore_without_checkpoint_is_a_clear_error(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    with pytest.raises(ValueError, match="no checkpoint to restore"):
      ckpt.restore(_abstract(_state()))
    ckpt.save(3, _state())
    ckpt.wait()
    with pytest.raises(ValueError, match=r"no checkpoint for step 9.*\[3\]"):
      ckpt.restore(_abstract(_state()), step=9)


def test_restore_structure_mismatch(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, _state())
    ckpt.wait()
    wrong = _abstract(_state())
    wrong["params"]["extra"] = jax.ShapeDtypeStruct((2,), jnp.float32)
    with pytest.raises(ValueError, match="missing in the checkpoint: params/extra"):
      ckpt.restore(wrong)


# Orbax reads array metadata in parallel futures; when one fails, the others' errors are
# reported as "never retrieved" when the event loop closes. That noise is Orbax's, not ours.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupt_checkpoint(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, _state())
    ckpt.save(2, _state())
    ckpt.wait()
  # Truncated array data (as after a crash mid-copy): Orbax's tensorstore error, re-raised.
  data_files = [f for f in (tmp_path / "checkpoints" / "2" / "state").rglob("*")
                if f.is_file() and f.parent.name == "d"]
  assert data_files
  for f in data_files:
    with open(f, "r+b") as handle:
      handle.truncate(10)
  damaged = r"checkpoints/2 is damaged: .*delete .*checkpoints/2 to resume from step 1"
  with Checkpointer(tmp_path) as ckpt:
    with pytest.raises(checkpointing.DamagedCheckpoint, match=damaged):
      ckpt.restore(_abstract(_state()))
  # Deleted array data.
  shutil.rmtree(tmp_path / "checkpoints" / "2" / "state" / "d")
  with Checkpointer(tmp_path) as ckpt:
    with pytest.raises(checkpointing.DamagedCheckpoint, match=damaged):
      ckpt.restore(_abstract(_state()))
  # Truncated metadata: caught before reading arrays.
  (tmp_path / "checkpoints" / "1" / "state" / "_METADATA").write_text("{\"tree_met")
  with Checkpointer(tmp_path) as ckpt:
    with pytest.raises(checkpointing.DamagedCheckpoint,
                       match=r"checkpoints/1 is damaged: .*It is the only checkpoint"):
      ckpt.restore(_abstract(_state()), step=1)


def test_a_failure_that_is_not_damage_is_reported_as_it_is(tmp_path, monkeypatch):
  # An I/O error or any cause other than missing or unreadable files: no advice to delete.
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, _state())
    ckpt.save(2, _state())
    ckpt.wait()
    def unreachable(*args, **kwargs):
      raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(ckpt._manager, "restore", unreachable)
    with pytest.raises(RuntimeError, match=r"could not restore .*checkpoints/2: PermissionError"
                                           r".*does not look like damage") as e:
      ckpt.restore(_abstract(_state()))
    assert "delete" not in str(e.value)


def _data_state_of_two_processes(tmp_path, states):
  """A checkpoint whose data state was written by two processes (`states`, one each)."""
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, _state(), data_state=states[0], loop_state={})
    ckpt.wait()
  data_dir = tmp_path / "checkpoints" / "1" / "data_state"
  (data_dir / "process_0-of-1.json").unlink()
  for i, state in enumerate(states):
    (data_dir / f"process_{i}-of-2.json").write_text(json.dumps({"type": "json", "value": state}))


def test_another_process_count_resumes_a_global_batch_index(tmp_path):
  # The in-memory pipelines: every process at global batch 7, which any process count resumes.
  _data_state_of_two_processes(tmp_path, [{"next_index": 7}, {"next_index": 7}])
  with Checkpointer(tmp_path) as ckpt:
    _, data_state = ckpt.restore(_abstract(_state()), to_resume=True)
  assert data_state == {"next_index": 7}


def test_another_process_count_is_refused_for_other_data_states(tmp_path):
  # A streaming pipeline's state: each process's place in its own documents.
  _data_state_of_two_processes(tmp_path, [{"parent": {"next_index": 3}, "bins": [1]},
                                          {"parent": {"next_index": 4}, "bins": [2]}])
  with Checkpointer(tmp_path) as ckpt:
    with pytest.raises(checkpointing.ProcessCountMismatch,
                       match=r"written by 2 process\(es\) and this run has 1: .* resume with 2 "
                             r"process\(es\)"):
      ckpt.restore(_abstract(_state()), to_resume=True)


def test_a_missing_data_state_file_is_damage(tmp_path):
  _data_state_of_two_processes(tmp_path, [{"next_index": 7}, {"next_index": 7}])
  (tmp_path / "checkpoints" / "1" / "data_state" / "process_1-of-2.json").unlink()
  with Checkpointer(tmp_path) as ckpt:
    with pytest.raises(checkpointing.DamagedCheckpoint, match=r"lacks processes \[1\] of 2"):
      ckpt.restore(_abstract(_state()), to_resume=True)


def test_restore_params_accepts_three_paths(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(4, _state(1.0))
    ckpt.save(8, _state(3.0))
    ckpt.wait()
  abstract = _abstract(_state()["params"])
  for path, scale in ((tmp_path, 3.0), (tmp_path / "checkpoints", 3.0),
                      (tmp_path / "checkpoints" / "4", 1.0)):
    params = init_from.restore_params(path, abstract)
    assert set(params) == {"blocks", "embedding"}
    np.testing.assert_array_equal(params["blocks"][0]["kernel"], scale)
  assert init_from.resolve_checkpoint(tmp_path) == (tmp_path / "checkpoints" / "8", 8)


def test_restore_params_mismatch_names_keys(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, _state())
    ckpt.wait()
  abstract = _abstract(_state()["params"])
  abstract["blocks"][0]["kernel"] = jax.ShapeDtypeStruct((4, 5), jnp.float32)
  del abstract["embedding"]
  abstract["head"] = jax.ShapeDtypeStruct((2,), jnp.float32)
  with pytest.raises(ValueError) as error:
    init_from.restore_params(tmp_path, abstract)
  message = str(error.value)
  assert "missing in the checkpoint: head" in message
  assert "unexpected in the checkpoint (not in the model): embedding" in message
  assert "shape mismatch at blocks/0/kernel: model (4, 5), checkpoint (4, 3)" in message
  with pytest.raises(ValueError, match="no finished checkpoint"):
    init_from.restore_params(tmp_path / "checkpoints" / "1" / "state", abstract)
  with pytest.raises(ValueError, match="does not exist"):
    init_from.restore_params(tmp_path / "nowhere", abstract)


def test_preemption_handler():
  original = signal.getsignal(signal.SIGTERM)
  try:
    is_requested = preemption.install_handler()
    assert not is_requested()
    os.kill(os.getpid(), signal.SIGTERM)
    assert is_requested()
    assert is_requested(step=3)   # single process: the local flag
    assert signal.getsignal(signal.SIGTERM) == original  # a second SIGTERM is not swallowed
    # Installing twice does not stack; uninstall puts the original back.
    first = preemption.install_handler()
    second = preemption.install_handler()
    os.kill(os.getpid(), signal.SIGTERM)
    assert second() and not first()
    assert signal.getsignal(signal.SIGTERM) == original
    third = preemption.install_handler()
    assert signal.getsignal(signal.SIGTERM) != original
    third.uninstall()
    assert signal.getsignal(signal.SIGTERM) == original
  finally:
    signal.signal(signal.SIGTERM, original)


def test_relative_workdir_is_resolved(tmp_path, monkeypatch):
  """`--workdir=runs/lm` is relative; Orbax only takes absolute paths."""
  monkeypatch.chdir(tmp_path)
  ckpt = checkpointing.Checkpointer("runs/lm", keep=1, best_metric=None, async_save=False)
  ckpt.save(1, {"w": jnp.ones(3)})
  ckpt.wait()
  assert ckpt.latest_step() == 1
  assert (tmp_path / "runs" / "lm" / "checkpoints" / "1").is_dir()
  restored, _ = ckpt.restore({"w": jax.ShapeDtypeStruct((3,), jnp.float32)})
  np.testing.assert_array_equal(restored["w"], np.ones(3))
  ckpt.close()
