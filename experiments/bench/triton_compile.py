"""Compile the fused kernels for a GPU on a machine without one: registers, spills, shared memory.

  pip install triton                                   # Triton's compiler, with NVIDIA's ptxas
  python -m experiments.bench.triton_compile --out=runs/bench/compile      # sm_90 (H100)

For each scheme and head dimension, the fused attention's forward and backward are lowered for
CUDA (`lowering_platforms=("cuda",)`, as in the kernel tests) and the Triton module of each of
its three kernels (forward, dq + bias gradients, dk/dv) is compiled by the `triton` package for
the chosen architecture down to a cubin, whose resource usage `cuobjdump` reports. This is the
step that cross-lowering alone does not check: whether Triton's compiler accepts a kernel, and
whether its tiles fit the registers (255 per thread) and shared memory (227 KiB per block on an
H100) without spilling to local memory.

What it does not tell: speed. Triton here is the PyPI release, not the copy XLA bundles, so the
numbers are close to, not identical with, what a GPU run compiles. The modules are taken from
JAX's Pallas Triton lowering through a private hook (`lower_jaxpr_to_triton_module`).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Optional

import jax
import jax.numpy as jnp

from experiments.bench import attention
from posjax.kernels import ScoreMod, fused_attention
from posjax.kernels.layout import triton_options

SCHEMES = ("none", "alibi", "t5", "kerple_log", "kerple_power", "sandwich", "fire")
KERNELS = ("forward", "dq_and_bias", "dk_dv")  # the order in which the backward pass lowers them
COLUMNS = ("scheme", "head_dim", "kernel", "num_warps", "registers", "local_bytes", "stack_bytes",
           "shared_bytes", "blocks_per_sm", "status")
REGISTERS_PER_SM = 65536


@contextlib.contextmanager
def _captured_modules():
  """Collects the text of every Triton module that JAX lowers inside the block."""
  from jax._src.pallas.triton import lowering  # private: the module before serialization
  modules, original = [], lowering.lower_jaxpr_to_triton_module

  def capture(*args, **kwargs):
    result = original(*args, **kwargs)
    modules.append(result.module.operation.get_asm())
    return result

  lowering.lower_jaxpr_to_triton_module = capture
  try:
    yield modules
  finally:
    lowering.lower_jaxpr_to_triton_module = original


def triton_modules(scheme: str, head_dim: int, *, seq_len: int = 1024, heads: int = 8,
                   causal: bool = True, block: Optional[int] = None) -> list[str]:
  """The three kernels' Triton modules (text) for a bf16 forward + backward."""
  score_mod = attention.score_mod_of(scheme, heads, head_dim, causal)
  params = {} if score_mod is None else score_mod.params
  positions = jnp.arange(seq_len, dtype=jnp.int32)[None]

  def loss(q, k, v, params):
    mod = None if score_mod is None else ScoreMod(score_mod.fn, params)
    out = fused_attention(q, k, v, q_pos_BQ=positions, k_pos_BK=positions, causal=causal,
                          score_mod=mod, interpret=False, block_q=block, block_k=block)
    return jnp.sum(out.astype(jnp.float32))

  x = jax.ShapeDtypeStruct((1, seq_len, heads, head_dim), jnp.bfloat16)
  with _captured_modules() as modules:
    jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))).trace(x, x, x, params).lower(
        lowering_platforms=("cuda",))
  if len(modules) != len(KERNELS):
    raise RuntimeError(f"expected {len(KERNELS)} Triton kernels for {scheme}, got {len(modules)}")
  return modules


def resource_usage(module_text: str, *, arch: int, num_warps: int, num_stages: int,
                   timeout_s: float) -> dict:
  """`_compile` in a child process, killed after `timeout_s` (some kernels spill so much that
  ptxas runs for many minutes)."""
  with tempfile.TemporaryDirectory() as tmp:
    source = os.path.join(tmp, "kernel.ttir")
    with open(source, "w") as f:
      f.write(module_text)
    child = (f"import json; from experiments.bench.triton_compile import _compile; "
             f"print(json.dumps(_compile({source!r}, arch={arch}, num_warps={num_warps}, "
             f"num_stages={num_stages})))")
    try:
      done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                            timeout=timeout_s)
    except subprocess.TimeoutExpired:
      raise TimeoutError(f"compile took over {timeout_s:.0f} s") from None
  if done.returncode:
    raise RuntimeError(done.stderr.strip().splitlines()[-1])
  return json.loads(done.stdout.strip().splitlines()[-1])


def _compile(source: str, *, arch: int, num_warps: int, num_stages: int) -> dict:
  """Compiles one Triton module (a `.ttir` file) for `sm_<arch>` and reads the cubin's resource
  usage."""
  import triton
  from triton.backends.compiler import GPUTarget

  compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                            options={"num_warps": num_warps, "num_stages": num_stages})
  with tempfile.TemporaryDirectory() as tmp:
    cubin = os.path.join(tmp, "kernel.cubin")
    with open(cubin, "wb") as f:
      f.write(compiled.asm["cubin"])
    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    report = subprocess.run([os.path.join(tools, "cuobjdump"), "--dump-resource-usage", cubin],
                            capture_output=True, text=True, check=True).stdout
  usage = dict(re.findall(r"(REG|STACK|LOCAL|SHARED):(\d+)", report))
  registers = int(usage["REG"])
  return {"registers": registers, "local_bytes": int(usage["LOCAL"]),
          "stack_bytes": int(usage["STACK"]),
          "shared_bytes": int(compiled.metadata.shared) + int(usage["SHARED"]),
          "blocks_per_sm": REGISTERS_PER_SM // (registers * 32 * num_warps)}


def _write(rows, out_dir: str, arch: int):
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "triton_compile.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
  lines = [f"Triton compile for sm_{arch} (no GPU; jax {jax.__version__}), bf16, causal:", "",
           "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
  lines += ["| " + " | ".join(str(row.get(c, "")) for c in COLUMNS) + " |" for row in rows]
  with open(os.path.join(out_dir, "triton_compile.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m experiments.bench.triton_compile")
  parser.add_argument("--out", required=True)
  parser.add_argument("--arch", type=int, default=90, help="compute capability, 90 = H100")
  parser.add_argument("--head_dims", default="64,128")
  parser.add_argument("--schemes", default=",".join(SCHEMES))
  parser.add_argument("--timeout_s", type=float, default=120, help="per kernel")
  parser.add_argument("--block", type=int, default=None, help="tile size (default: the kernel's)")
  args = parser.parse_args(argv)
  if importlib.util.find_spec("triton") is None:
    print("this needs Triton's compiler: pip install triton", file=sys.stderr)
    return 2
  rows, failed = [], False
  for head_dim in [int(d) for d in args.head_dims.split(",")]:
    options = triton_options(head_dim)
    for scheme in args.schemes.split(","):
      modules = triton_modules(scheme, head_dim, block=args.block)
      for kernel, text in zip(KERNELS, modules):
        row = {"scheme": scheme, "head_dim": head_dim, "kernel": kernel,
               "num_warps": options["num_warps"]}
        try:
          row.update(resource_usage(text, arch=args.arch, timeout_s=args.timeout_s, **options),
                     status="ok")
          if row["local_bytes"] or row["stack_bytes"]:
            row["status"] = "spills"
        except Exception as e:  # a compile failure is a result: record it and go on
          row["status"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
        failed |= row["status"] != "ok"
        rows.append(row)
        print(" ".join(f"{c}={row.get(c, '')}" for c in COLUMNS), flush=True)
  print(_write(rows, args.out, args.arch))
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
