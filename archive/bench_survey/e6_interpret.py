"""tokamax Pallas-Triton flash attention (dot_product_attention implementation='triton') on CPU:
 (1) forward in Pallas interpret mode (block.pallas_call patched to interpret=True, supported_on
     patched): a bias + causal *bool mask* (the is_causal path, the backward kernel and the
     FlexAttention kernel use program_id inside loops, which the CPU HLO interpreter cannot lower);
 (2) forward+backward cross-lowered for CUDA (no run): the shapes of the Triton custom calls'
     outputs, to see what the backward writes for the bias gradient."""
import functools, math, re, jax, jax.numpy as jnp
from absl import logging as alog; alog.set_verbosity(alog.ERROR)
from tokamax._src.pallas import block
_orig = block.pallas_call
INTERPRET = [True]
def maybe_interp(*a, **kw):
  if INTERPRET[0]:
    kw.pop("compiler_params", None); kw["interpret"] = True; kw["compiler_params"] = None
  return _orig(*a, **kw)
block.pallas_call = maybe_interp
import tokamax
from tokamax._src.ops.attention import pallas_triton as apt, pallas_triton_vjp as aptv
for cls in (apt.PallasTritonFlashAttention, aptv.PallasTritonFlashAttentionVjp):
  cls.supported_on = lambda self, device: True
from posjax.encodings import registry
from posjax.encodings.bias import materialize_bias
jax.config.update("jax_default_matmul_precision", "highest")

B, L, H, G, D = 2, 128, 4, 2, 64
scale = 1 / math.sqrt(D)
ks = jax.random.split(jax.random.PRNGKey(0), 4)
q = jax.random.normal(ks[0], (B, L, H, D)); k = jax.random.normal(ks[1], (B, L, G, D)); v = jax.random.normal(ks[2], (B, L, G, D))
causal = jnp.tril(jnp.ones((L, L), bool))
def ref(q, k, v, bias):
  kr, vr = jnp.repeat(k, H // G, 2), jnp.repeat(v, H // G, 2)
  s = jnp.where(causal, jnp.einsum("bqhd,bkhd->bhqk", q, kr) * scale + bias, -1e30)
  return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, -1), vr)
slopes = jnp.asarray(registry.get("alibi").score_mod.__globals__["alibi_slopes"](H))
rel = (jnp.arange(L)[None, :] - jnp.arange(L)[:, None]).astype(jnp.float32)
t5 = registry.get("t5"); o5 = t5.options()
t5p = t5.init(jax.random.PRNGKey(3), num_heads=H, head_dim=D, dim=H * D, **o5)
pos = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
t5_bias = materialize_bias(functools.partial(t5.score_mod, **o5), t5p, H, pos, pos)
alibi_dense = (slopes[:, None, None] * rel)[None]
cases = {"ALiBi dense [1,H,L,L]": (alibi_dense, alibi_dense),
         "ALiBi causal as [1,H,1,L] (m_h*j)": ((slopes[:, None, None] * jnp.arange(L, dtype=jnp.float32))[None], alibi_dense),
         "T5 dense [B,H,L,L]": (t5_bias, t5_bias)}
print(f"(1) forward, interpret mode, B={B} L={L} H={H} G={G} D={D} float32, causal via bool mask")
for name, (bias, ref_bias) in cases.items():
  out = tokamax.dot_product_attention(q, k, v, bias=bias, mask=causal[None, None], implementation="triton")
  print(f"    {name:36s} max|out - ref| = {float(jnp.abs(out - ref(q, k, v, ref_bias)).max()):.1e}")

INTERPRET[0] = False
print("(2) grad w.r.t. (q, bias params) cross-lowered for CUDA; Triton custom-call result types:")
Lc = 1024
sd = jax.ShapeDtypeStruct
for name, bias_fn in {"ALiBi learnable slopes, bias [1,H,L,L]": lambda p: (p[:, None, None] * (jnp.arange(Lc)[None, :] - jnp.arange(Lc)[:, None]).astype(jnp.float32))[None],
                      "ALiBi causal as [1,H,1,L]": lambda p: (p[:, None, None] * jnp.arange(Lc, dtype=jnp.float32))[None]}.items():
  f = lambda p, q, k, v: jnp.sum(tokamax.dot_product_attention(q, k, v, bias=bias_fn(p), is_causal=True, implementation="triton").astype(jnp.float32))
  args = (sd((H,), jnp.float32), sd((4, Lc, H, D), jnp.bfloat16), sd((4, Lc, G, D), jnp.bfloat16), sd((4, Lc, G, D), jnp.bfloat16))
  hlo = jax.jit(jax.grad(f, argnums=(0, 1))).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
  calls = [l for l in hlo.splitlines() if "stablehlo.custom_call" in l and "triton" in l]
  print(f"    {name} (B=4, L={Lc}, H={H}, G={G}, D={D}, bf16): {len(calls)} Triton calls")
  for l in calls:
    print("      ->", l.split("->")[-1].strip()[:200])
