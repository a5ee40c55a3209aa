import functools, math, sys, jax, jax.numpy as jnp
from posjax.encodings import registry
from posjax.encodings.bias import materialize_bias
from posjax.kernels.fused_attention import fused_attention, ScoreMod
jax.config.update("jax_default_matmul_precision", "highest")
B, L, H, G, D = 2, 128, 4, 2, 64
kq, kk, kv, kc, kp = jax.random.split(jax.random.PRNGKey(0), 5)
q = jax.random.normal(kq, (B, L, H, D)); k = jax.random.normal(kk, (B, L, G, D)); v = jax.random.normal(kv, (B, L, G, D))
pos = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
def get(name):
  s = registry.get(name); opts = s.options(**({"num_heads": H} if "num_heads" in s.defaults else {}))
  params = s.init(kp, num_heads=H, head_dim=D, dim=H*D, dtype=jnp.float32, **opts) if s.init else {}
  return functools.partial(s.score_mod, **opts), params
for name in sys.argv[1:]:
  fn, params = get(name)
  ref = jax.nn.dot_product_attention(q, k, v, bias=materialize_bias(fn, params, H, pos, pos), is_causal=True, implementation="xla")
  f = lambda q, k, v, p: fused_attention(q, k, v, q_pos_BQ=pos, k_pos_BK=pos, causal=True, score_mod=ScoreMod(fn, p))
  print(name, "eager", float(jnp.abs(f(q, k, v, params) - ref).max()), "jit", float(jnp.abs(jax.jit(f)(q, k, v, params) - ref).max()))
