"""The device mesh, logical-to-mesh axis rules, and global batches from host-local data.

Parameters carry logical axis names (`embed`, `heads`, `mlp`, `vocab`, ...) from the layers; the
rules below place them on the mesh axes `data`, `fsdp` and `tensor`:
  - batch          -> (data, fsdp): every example on one data/fsdp shard,
  - embed          -> fsdp: parameters and optimizer state split along the model width (FSDP),
  - heads, kv_heads, mlp, vocab -> tensor: tensor parallelism over heads and the MLP width.
A dimension that the mesh axis does not divide is replicated instead (tiny models, odd vocab).
"""

from __future__ import annotations

from typing import Mapping

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
LOGICAL_RULES = {
    "batch": BATCH_AXES,
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "vocab": "tensor",
}


def make_mesh(mesh_cfg: Mapping[str, int], devices=None) -> Mesh:
  """A `Mesh(data, fsdp, tensor)`; one size may be -1 for "all the devices left"."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = [int(mesh_cfg[a]) for a in AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh {dict(zip(AXES, sizes))}: at most one axis may be -1")
  known = int(np.prod([s for s in sizes if s != -1]))
  if any(s == 0 or s < -1 for s in sizes) or len(devices) % known:
    raise ValueError(f"mesh {dict(zip(AXES, sizes))} does not fit {len(devices)} devices: the "
                     "sizes must be positive and multiply to the device count")
  sizes = [len(devices) // known if s == -1 else s for s in sizes]
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f"mesh {dict(zip(AXES, sizes))} uses {int(np.prod(sizes))} devices but "
                     f"there are {len(devices)}: make the sizes multiply to {len(devices)}")
  # Auto axes: XLA propagates shardings from the inputs and parameters (GSPMD); the layers need
  # no sharding annotations of their own.
  return jax.make_mesh(tuple(sizes), AXES, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


def mesh_spec(logical: P, shape: tuple[int, ...], mesh: Mesh) -> P:
  """Logical names to mesh axes, replicating a dimension the mesh axis does not divide."""
  spec, used = [], set()
  for name, size in zip(tuple(logical) + (None,) * (len(shape) - len(logical)), shape):
    axes = LOGICAL_RULES.get(name) if name is not None else None
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    axes = tuple(a for a in axes if a not in used)
    if not axes or size % int(np.prod([mesh.shape[a] for a in axes])):
      spec.append(None)
      continue
    used.update(axes)
    spec.append(axes if len(axes) > 1 else axes[0])
  return P(*spec)


def param_shardings(params_state: nnx.State, mesh: Mesh) -> dict:
  """A pure-dict tree of `NamedSharding`s for an (abstract) `nnx.State` of parameters."""
  logical = nnx.to_pure_dict(nnx.get_partition_spec(params_state))
  shapes = nnx.to_pure_dict(params_state)
  return jax.tree.map(lambda spec, x: NamedSharding(mesh, mesh_spec(spec, x.shape, mesh)),
                      logical, shapes, is_leaf=lambda x: isinstance(x, P))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def global_batch(host_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This host's rows of the global batch, as global arrays sharded over (data, fsdp)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in host_batch.items()}



def batch_share(mesh: Mesh) -> tuple[int, int]:
  """`(index, count)`: this process reads part `index` of `count` equal parts of every global
  batch, the rows its devices hold under `batch_sharding(mesh)`.

  Processes whose devices hold the same rows read the same part: when the batch axes (data,
  fsdp) do not span processes (e.g. `data=1, fsdp=1, tensor=8` over two processes), each process
  reads the whole batch, since `make_array_from_process_local_data` takes a process's rows to be
  those of its devices.
  """
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  held: dict[int, set[int]] = {}
  for device, index in batch_sharding(mesh).devices_indices_map((shards,)).items():
    held.setdefault(device.process_index, set()).add(index[0].start or 0)
  parts = sorted({tuple(sorted(rows)) for rows in held.values()})
  blocks = [tuple(range(p[0], p[0] + len(parts[0]))) for p in parts]
  if parts != blocks or sum(map(len, parts)) != shards:
    raise ValueError(f"mesh {dict(mesh.shape)}: the processes hold batch shards {parts}, not "
                     "equal blocks of consecutive shards; choose mesh sizes whose batch axes "
                     "(data, fsdp) split evenly over the processes, or not at all")
  return parts.index(tuple(sorted(held[jax.process_index()]))), len(parts)
