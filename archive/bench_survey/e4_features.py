"""Packed sequences (segments), GQA, bf16, head dims 64/128 on CPU with tokamax's xla and
xla_chunked implementations. tokamax.dot_product_attention has no segment_ids argument; packed
causal segments are expressed with the op-level Mask(k_start=..., is_causal=True) (O(L) ints) or a
dense bool mask."""
import inspect, math, jax, jax.numpy as jnp
import tokamax
from tokamax._src.ops.attention import base, xla_chunked
jax.config.update("jax_default_matmul_precision", "highest")
print("tokamax.dot_product_attention parameters:", list(inspect.signature(tokamax.dot_product_attention).parameters))
B, L, H, G = 2, 128, 8, 2
seg_lens = [[40, 50, 38], [128]]
seg = jnp.stack([jnp.concatenate([jnp.full((n,), i + 1) for i, n in enumerate(s)]) for s in seg_lens])  # [B,L]
start = jnp.stack([jnp.concatenate([jnp.full((n,), sum(s[:i])) for i, n in enumerate(s)]) for s in seg_lens])
xla = base.DotProductAttention(); chunk = xla_chunked.XlaChunkedDotProductAttention(chunk_size=(32, 64))
for D in (64, 128):
  ks = jax.random.split(jax.random.PRNGKey(D), 3)
  q = jax.random.normal(ks[0], (B, L, H, D)); k = jax.random.normal(ks[1], (B, L, G, D)); v = jax.random.normal(ks[2], (B, L, G, D))
  dense_mask = (seg[:, :, None] == seg[:, None, :]) & jnp.tril(jnp.ones((L, L), bool))    # [B,L,L]
  def ref(q, k, v):
    kr, vr = jnp.repeat(k, H // G, 2).astype(jnp.float32), jnp.repeat(v, H // G, 2).astype(jnp.float32)
    s = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), kr) / math.sqrt(D)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(jnp.where(dense_mask[:, None], s, -1e30), -1), vr)
  r = ref(q, k, v)
  m = base.Mask(k_start=start[:, None, :], is_causal=True)   # k_start per query row: [B,1(heads),T]
  for dt in (jnp.float32, jnp.bfloat16):
    qq, kk, vv = (x.astype(dt) for x in (q, k, v))
    outs = {
      "xla, Mask(k_start, causal)": xla(qq, kk, vv, mask=m),
      "xla_chunked, Mask(k_start, causal)": chunk(qq, kk, vv, mask=m),
      "public API, dense bool mask": tokamax.dot_product_attention(qq, kk, vv, mask=dense_mask[:, None], implementation="xla"),
    }
    for name, o in outs.items():
      print(f"D={D} {jnp.dtype(dt).name:8s} GQA {H}/{G}, 2 packed rows: {name:36s} max|err| {float(jnp.abs(o.astype(jnp.float32) - r).max()):.1e}")
