"""Does tokamax's Triton backward still write a [B,H,L,L] bias gradient when the bias is a constant
(fixed ALiBi, grad only w.r.t. q,k,v)? CUDA cross-lowering on CPU; after XLA's own DCE (compiled
HLO is not available without a GPU, so we inspect the lowered StableHLO)."""
import jax, jax.numpy as jnp
from absl import logging as alog; alog.set_verbosity(alog.ERROR)
import tokamax
from tokamax._src.ops.attention import pallas_triton as apt, pallas_triton_vjp as aptv
for cls in (apt.PallasTritonFlashAttention, aptv.PallasTritonFlashAttentionVjp):
  cls.supported_on = lambda self, device: True
B, L, H, D = 4, 1024, 4, 64
slopes = 2.0 ** -jnp.arange(1, H + 1, dtype=jnp.float32)
bias = (slopes[:, None, None] * jnp.arange(L, dtype=jnp.float32))[None]   # constant [1,H,1,L]
sd = jax.ShapeDtypeStruct((B, L, H, D), jnp.bfloat16)
f = lambda q, k, v: jnp.sum(tokamax.dot_product_attention(q, k, v, bias=bias, is_causal=True, implementation="triton").astype(jnp.float32))
hlo = jax.jit(jax.grad(f, argnums=(0, 1, 2))).trace(sd, sd, sd).lower(lowering_platforms=("cuda",)).as_text()
for l in hlo.splitlines():
  if "stablehlo.custom_call" in l and "triton" in l:
    print("->", l.split("->")[-1].strip()[:200])
