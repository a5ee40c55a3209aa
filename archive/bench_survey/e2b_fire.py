import functools, math, jax, jax.numpy as jnp
from posjax.encodings import registry
from posjax.encodings.bias import materialize_bias
from posjax.kernels.fused_attention import fused_attention, ScoreMod
jax.config.update("jax_default_matmul_precision", "highest")
B, L, H, G, D = 2, 128, 4, 2, 64
kq, kk, kv, kc, kp = jax.random.split(jax.random.PRNGKey(0), 5)
q = jax.random.normal(kq, (B, L, H, D)); k = jax.random.normal(kk, (B, L, G, D)); v = jax.random.normal(kv, (B, L, G, D))
pos = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
s = registry.get("fire"); opts = s.options()
params = s.init(kp, num_heads=H, head_dim=D, dim=H*D, dtype=jnp.float32, **opts)
fn = functools.partial(s.score_mod, **opts)
bias = materialize_bias(fn, params, H, pos, pos)
ref = jax.nn.dot_product_attention(q, k, v, bias=bias, is_causal=True, implementation="xla")
for jit in [False, True]:
  f = lambda q, k, v, p: fused_attention(q, k, v, q_pos_BQ=pos, k_pos_BK=pos, causal=True, score_mod=ScoreMod(fn, p))
  out = (jax.jit(f) if jit else f)(q, k, v, params)
  err = jnp.abs(out - ref).max(axis=(0, 2, 3))
  print("jit" if jit else "eager", "max err", float(err.max()), "rows with err>1e-4:", jnp.nonzero(err > 1e-4)[0][:20])
  # forward through vjp
  o2, _ = jax.vjp(f, q, k, v, params)
  print("  via jax.vjp fwd max err", float(jnp.abs(o2 - ref).max()))
for bq in [16, 32, 64, 128]:
  out = fused_attention(q, k, v, q_pos_BQ=pos, k_pos_BK=pos, causal=True, score_mod=ScoreMod(fn, params), block_q=bq, block_k=bq)
  print("block", bq, float(jnp.abs(out - ref).max()))
