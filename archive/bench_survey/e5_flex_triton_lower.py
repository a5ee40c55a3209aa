"""Cross-lower tokamax's Pallas-Triton FlexAttention for CUDA on this CPU machine (no GPU: lowering
only, nothing compiled by Triton or run). supported_on is patched to True because the op refuses
to trace with a CPU default device. For each posjax score_mod: does the forward lower (the fuser
must pull block specs through the score_mod), and does jax.grad w.r.t. the bias params work?"""
import functools, math, traceback, jax, jax.numpy as jnp
from tokamax._src.ops.flex_attention import pallas_triton as fpt
from posjax.encodings import registry
fpt.PallasTritonFlexAttention.supported_on = lambda self, device: True
flex = fpt.PallasTritonFlexAttention()
B, L, H, D = 1, 256, 4, 64
scale = 1 / math.sqrt(D)

def schemes():
  out = {"none": (lambda p, h, qp, kp: jnp.zeros((), jnp.float32), {})}
  for name in ["alibi", "t5", "kerple_log", "sandwich", "fire"]:
    s = registry.get(name); opts = s.options(**({"num_heads": H} if "num_heads" in s.defaults else {}))
    params = s.init(jax.random.PRNGKey(1), num_heads=H, head_dim=D, dim=H * D, dtype=jnp.float32, **opts) if s.init else {}
    out[name] = (functools.partial(s.score_mod, **opts), params)
  out["dense_bias_array"] = ("dense", {"bias": jnp.zeros((1, H, L, L), jnp.float32)})
  return out

q = jax.ShapeDtypeStruct((B, L, H, D), jnp.bfloat16)
def short(e):
  s = f"{type(e).__name__}: {e}".replace("\n", " ")
  return s[:220]
for name, (fn, params) in schemes().items():
  def score_mod_of(p):
    if fn == "dense":
      return lambda s: s * scale + p["bias"]
    head = jnp.arange(H, dtype=jnp.int32)[None, :, None, None]
    qp = jnp.arange(L, dtype=jnp.int32)[:, None]; kp = jnp.arange(L, dtype=jnp.int32)[None, :]
    return lambda s: s * scale + fn(p, head, qp, kp)
  causal = lambda shape: jnp.arange(shape[-2])[:, None] >= jnp.arange(shape[-1])[None, :]
  fwd = lambda q, k, v, p: flex(q, k, v, score_mod=score_mod_of(p), mask_mod=causal)
  try:
    hlo = jax.jit(fwd).trace(q, q, q, params).lower(lowering_platforms=("cuda",)).as_text()
    n = hlo.count("__gpu$xla.gpu.triton")
    fwd_res = f"lowers ({n} Triton custom call{'s' if n != 1 else ''})"
  except Exception as e:
    fwd_res = "FAILS " + short(e)
  try:
    g = jax.grad(lambda q, k, v, p: jnp.sum(fwd(q, k, v, p).astype(jnp.float32)), argnums=(0, 3))
    jax.jit(g).trace(q, q, q, params).lower(lowering_platforms=("cuda",))
    bwd_res = "lowers"
  except Exception as e:
    bwd_res = "FAILS " + short(e)
  print(f"{name:16s} forward: {fwd_res}\n{'':16s} grad:    {bwd_res}", flush=True)
