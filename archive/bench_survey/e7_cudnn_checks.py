"""jax's cuDNN attention front-end checks, called directly on CPU (no GPU needed for these pure
Python shape checks): does it accept a sequence-broadcast [1,H,1,L] bias (ALiBi causal trick)?"""
import inspect, jax, jax.numpy as jnp
from jax._src.cudnn import fused_attention_stablehlo as fa
print("check_layout signature:", inspect.signature(fa.check_layout))
B, L, H, D = 2, 256, 4, 64
q = jnp.zeros((B, L, H, D), jnp.bfloat16)
layout = fa._normalize_layout("BTNH")
for shape in [(1, H, L, L), (1, H, 1, L)]:
  bias = jnp.zeros(shape, jnp.bfloat16)
  try:
    fa.check_layout(q, q, q, bias, None, None, None, None, None, None, layout)
    print("bias", shape, "accepted by check_layout")
  except Exception as e:
    print("bias", shape, "rejected:", type(e).__name__, e)
print("should_export_dbias(any shape) ->", fa.should_export_dbias((1, H, L, L), q.shape, layout))
