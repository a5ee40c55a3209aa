"""Which hand-written score_mods does tokamax's Triton FlexAttention forward accept (CUDA
cross-lowering on CPU, forward only)? Probes the jax.experimental.pallas.fuser pull rules."""
import math, logging, jax, jax.numpy as jnp
logging.getLogger("absl").setLevel(logging.ERROR)
from absl import logging as alog; alog.set_verbosity(alog.ERROR)
from tokamax._src.ops.flex_attention import pallas_triton as fpt
fpt.PallasTritonFlexAttention.supported_on = lambda self, device: True
flex = fpt.PallasTritonFlexAttention()
B, L, H, D = 1, 256, 4, 64
scale = 1 / math.sqrt(D)
slopes = 2.0 ** -jnp.arange(1, H + 1, dtype=jnp.float32)
I = lambda: jnp.arange(L, dtype=jnp.int32)[:, None]
J = lambda: jnp.arange(L, dtype=jnp.int32)[None, :]
rel = lambda: (J() - I()).astype(jnp.float32)            # [L, L] from iota
hb = lambda x: x[None, :, None, None]                     # [H] -> [1,H,1,1]
r1, r2 = jnp.full((H,), 1.0), jnp.full((H,), 0.5)
table = jnp.zeros((32, H))
variants = {
  "alibi: slopes[h] * (j-i)  (broadcast mul, no gather)": lambda s: s * scale + hb(slopes) * rel(),
  "alibi, bidirectional: -slopes[h]*|j-i|":             lambda s: s * scale - hb(slopes) * jnp.abs(rel()),
  "kerple_log with jnp.log(1 + r2*d)":                   lambda s: s * scale - hb(r1) * jnp.log(1 + hb(r2) * jnp.abs(rel())),
  "kerple_log with jnp.log1p(r2*d)":                     lambda s: s * scale - hb(r1) * jnp.log1p(hb(r2) * jnp.abs(rel())),
  "kerple_power: -r1*|d|**r2":                           lambda s: s * scale - hb(r1) * jnp.abs(rel()) ** hb(r2),
  "sandwich-like: sum_k cos(d*w_k) (extra axis)":        lambda s: s * scale + jnp.sum(jnp.cos(rel()[..., None] * jnp.arange(1, 5.0)), -1),
  "cos(d) only":                                         lambda s: s * scale + jnp.cos(rel()),
  "T5-like: table[bucket(d), h] (gather)":               lambda s: s * scale + jnp.moveaxis(table[jnp.clip(J() - I(), 0, 31)], -1, 0)[None],
  "dense [1,H,L,L] array closure":                       lambda s: s * scale + jnp.ones((1, H, L, L)),
}
q = jax.ShapeDtypeStruct((B, L, H, D), jnp.bfloat16)
causal = lambda shape: jnp.arange(shape[-2])[:, None] >= jnp.arange(shape[-1])[None, :]
for name, sm in variants.items():
  try:
    hlo = jax.jit(lambda q, k, v: flex(q, k, v, score_mod=sm, mask_mod=causal)).trace(q, q, q).lower(lowering_platforms=("cuda",)).as_text()
    print(f"{name:55s} lowers")
  except Exception as e:
    print(f"{name:55s} FAILS {type(e).__name__}: {str(e)[:90]!r}")
