import jax, jax.numpy as jnp, tokamax, traceback
from tokamax._src.ops.attention import api
print("jax", jax.__version__, "tokamax", tokamax.__version__, "backend", jax.default_backend())
print("IMPLEMENTATIONS on this machine:", list(api.IMPLEMENTATIONS))
print("default implementation order:", api._DEFAULT_IMPLEMENTATION)
ks = jax.random.split(jax.random.PRNGKey(0), 3)
q, k, v = (jax.random.normal(kk, (1, 128, 4, 64), jnp.float32) for kk in ks)
for impl in [None, "xla", "xla_chunked", "cudnn", "triton", "mosaic"]:
    try:
        out = tokamax.dot_product_attention(q, k, v, is_causal=True, implementation=impl)
        print(f"{impl!s:12} OK", out.shape)
    except Exception as e:
        print(f"{impl!s:12} FAIL {type(e).__name__}: {str(e).splitlines()[0][:150]}")
try:
    from tokamax._src.ops.flex_attention import api as fapi
    print("flex_attention IMPLEMENTATIONS:", list(fapi.IMPLEMENTATIONS))
except Exception as e:
    print("import flex_attention.api FAIL", type(e).__name__, e)
from tokamax._src.ops.flex_attention import pallas_triton as fpt
print("flex pallas_triton module imports; has PallasTritonGatedLinearUnit:", hasattr(fpt, "PallasTritonGatedLinearUnit"),
      "has PallasTritonFlexAttention:", hasattr(fpt, "PallasTritonFlexAttention"))
print("FlexAttention exported at top level:", [n for n in dir(tokamax) if "flex" in n.lower()])
