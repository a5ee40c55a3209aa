"""Causal ALiBi m_h*(j - i) equals m_h*j up to the per-row constant -m_h*i, which softmax ignores,
so a [B|1, H, 1, L] bias serves (also with packed segments: j, i = positions within the segment).
Checked on CPU: tokamax xla_chunked with the broadcast bias vs a dense-bias reference, values and
the gradient w.r.t. (learnable) slopes."""
import math, jax, jax.numpy as jnp
from tokamax._src.ops.attention import base, xla_chunked
jax.config.update("jax_default_matmul_precision", "highest")
B, L, H, G, D = 2, 256, 8, 2, 64
ks = jax.random.split(jax.random.PRNGKey(0), 4)
q = jax.random.normal(ks[0], (B, L, H, D)); k = jax.random.normal(ks[1], (B, L, G, D)); v = jax.random.normal(ks[2], (B, L, G, D)); ct = jax.random.normal(ks[3], (B, L, H, D))
seg_lens = [[100, 156], [256]]
seg = jnp.stack([jnp.concatenate([jnp.full((n,), i + 1) for i, n in enumerate(s)]) for s in seg_lens])
start = jnp.stack([jnp.concatenate([jnp.full((n,), sum(s[:i])) for i, n in enumerate(s)]) for s in seg_lens])
pos = (jnp.arange(L)[None] - start).astype(jnp.float32)                                   # position within segment
slopes = 2.0 ** (-8.0 * (jnp.arange(H) + 1) / H)
mask_dense = (seg[:, :, None] == seg[:, None, :]) & jnp.tril(jnp.ones((L, L), bool))
def ref(p, q):
  bias = p[None, :, None, None] * (pos[:, None, None, :] - pos[:, None, :, None])        # [B,H,L,L]
  kr, vr = jnp.repeat(k, H // G, 2), jnp.repeat(v, H // G, 2)
  s = jnp.where(mask_dense[:, None], jnp.einsum("bqhd,bkhd->bhqk", q, kr) / math.sqrt(D) + bias, -1e30)
  return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, -1), vr)
chunked = xla_chunked.XlaChunkedDotProductAttention(chunk_size=(64, 64))
mask = base.Mask(k_start=start[:, None, :], is_causal=True)
def bcast(p, q):
  bias = p[None, :, None, None] * pos[:, None, None, :]                                   # [B,H,1,L]
  return chunked(q, k, v, bias=bias, mask=mask)
o_r, o_b = ref(slopes, q), bcast(slopes, q)
g_r = jax.grad(lambda p: jnp.sum(ref(p, q) * ct))(slopes)
g_b = jax.grad(lambda p: jnp.sum(bcast(p, q) * ct))(slopes)
print(f"packed causal ALiBi, bias [B,H,1,L] through tokamax xla_chunked: max|out err| {float(jnp.abs(o_r - o_b).max()):.1e}, "
      f"max rel err d(slopes) {float(jnp.abs(g_r - g_b).max() / jnp.abs(g_r).max()):.1e}")
