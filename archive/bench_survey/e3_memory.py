"""XLA:CPU compile-time memory analysis (temp bytes) of forward+backward w.r.t. q, k, v and the bias
parameters. B=1, H=12, D=64, causal, float32 (the shape of experiments/bench/RESULTS.md's CPU table).
Not a GPU measurement: it shows how each path's memory grows with L."""
import functools, math, sys, jax, jax.numpy as jnp
import tokamax
from tokamax._src.ops.attention import xla_chunked
from tokamax._src.ops.flex_attention import base as flex_base
from posjax.encodings import registry
from posjax.encodings.bias import materialize_bias

B, H, D = 1, 12, 64
scale = 1 / math.sqrt(D)
chunked = xla_chunked.XlaChunkedDotProductAttention(chunk_size=(512, 1024))  # tokamax's default
flex = flex_base.FlexAttention()

def scheme(name):
  if name == "alibi_bcast":   # causal ALiBi as a [1,H,1,L] bias: m_h * j (row constant -m_h*i dropped)
    s = registry.get("alibi"); slopes = jnp.asarray(s.score_mod.__globals__["alibi_slopes"](H))
    return None, {"slopes": slopes}
  s = registry.get(name); opts = s.options(**({"num_heads": H} if "num_heads" in s.defaults else {}))
  params = s.init(jax.random.PRNGKey(1), num_heads=H, head_dim=D, dim=H * D, dtype=jnp.float32, **opts) if s.init else {}
  if name == "alibi":   # learnable-slope variant so that there is a parameter gradient
    params = {"slopes": jnp.asarray(s.score_mod.__globals__["alibi_slopes"](H))}
    fn = lambda p, h, qp, kp: p["slopes"][h] * (kp - qp).astype(jnp.float32)
    return fn, params
  return functools.partial(s.score_mod, **opts), params

def temp_mib(path, L, fn, params):
  pos = jnp.arange(L, dtype=jnp.int32)[None]
  sd = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
  q, k, v = sd(B, L, H, D), sd(B, L, H, D), sd(B, L, H, D)
  def bias_of(p):
    if fn is None:
      return (p["slopes"][:, None, None] * jnp.arange(L, dtype=jnp.float32))[None]  # [1,H,1,L]
    return materialize_bias(fn, p, H, pos, pos)
  def f(q, k, v, p):
    if path == "xla":
      o = tokamax.dot_product_attention(q, k, v, bias=bias_of(p), is_causal=True, implementation="xla")
    elif path == "xla_chunked":
      o = chunked(q, k, v, bias=bias_of(p), is_causal=True)
    elif path == "posjax_fused":
      from posjax.kernels.fused_attention import fused_attention, ScoreMod
      o = fused_attention(q, k, v, q_pos_BQ=pos, k_pos_BK=pos, causal=True, score_mod=ScoreMod(fn, p))
    elif path == "flex_xla":
      o = flex(q, k, v, score_mod=lambda s: s * scale + bias_of(p),
               mask_mod=lambda shape: jnp.tril(jnp.ones(shape[-2:], bool)))
    return jnp.sum(o)
  c = jax.jit(jax.grad(f, argnums=(0, 1, 2, 3))).lower(q, k, v, params).compile()
  return c.memory_analysis().temp_size_in_bytes / 2**20

Ls = [int(x) for x in sys.argv[1].split(",")]
for name in sys.argv[2].split(","):
  fn, params = scheme(name)
  for path in sys.argv[3].split(","):
    row = [f"{temp_mib(path, L, fn, params):,.0f}" for L in Ls]
    print(f"| {name} | {path} | " + " | ".join(row) + " |", flush=True)
