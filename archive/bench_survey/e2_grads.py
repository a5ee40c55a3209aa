"""tokamax (xla, xla_chunked, FlexAttention-xla) with posjax bias schemes: values and gradients
w.r.t. the bias parameters, vs a plain-jnp reference. CPU, float32, causal, GQA (H=4, G=2)."""
import functools, math, time
import jax, jax.numpy as jnp, numpy as np
import tokamax
from tokamax._src.ops.attention import base as attn_base, xla_chunked
from tokamax._src.ops.flex_attention import base as flex_base
from posjax.encodings import registry
from posjax.encodings.bias import materialize_bias
from posjax.kernels.fused_attention import fused_attention, ScoreMod

jax.config.update("jax_default_matmul_precision", "highest")
B, L, H, G, D = 2, 128, 4, 2, 64
scale = 1 / math.sqrt(D)
kq, kk, kv, kc, kp = jax.random.split(jax.random.PRNGKey(0), 5)
q = jax.random.normal(kq, (B, L, H, D)); k = jax.random.normal(kk, (B, L, G, D))
v = jax.random.normal(kv, (B, L, G, D)); ct = jax.random.normal(kc, (B, L, H, D))
pos = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))

def scheme_fns():
  out = {}
  for name in ["alibi", "t5", "kerple_log", "kerple_power", "sandwich", "fire"]:
    s = registry.get(name)
    opts = s.options(**({"num_heads": H} if "num_heads" in s.defaults else {}))
    params = s.init(kp, num_heads=H, head_dim=D, dim=H * D, dtype=jnp.float32, **opts) if s.init else {}
    out[name] = (functools.partial(s.score_mod, **opts), params)
  # ALiBi with *learnable* slopes (not a posjax scheme; the "learnable" case for ALiBi-like)
  slopes = jnp.asarray(registry.get("alibi").score_mod.__globals__["alibi_slopes"](H))
  out["alibi_learned_slopes"] = (lambda p, h, qp, kp_: p["slopes"][h] * (kp_ - qp).astype(jnp.float32),
                                 {"slopes": slopes})
  return out

def ref_attention(q, k, v, bias, mask):   # plain jnp, [B,H,L,L] bias
  kr, vr = jnp.repeat(k, H // G, axis=2), jnp.repeat(v, H // G, axis=2)
  s = jnp.einsum("bqhd,bkhd->bhqk", q, kr) * scale + bias
  s = jnp.where(mask, s, -1e30)
  return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, -1), vr)

causal = jnp.tril(jnp.ones((L, L), bool))
chunked = xla_chunked.XlaChunkedDotProductAttention(chunk_size=(32, 64))  # several chunks at L=128
flex = flex_base.FlexAttention()

def make_paths(fn, bidir=False):
  def dense(params):
    return materialize_bias(fn, params, H, pos, pos)
  paths = {
    "reference(jnp)": lambda q, k, v, p: ref_attention(q, k, v, dense(p), causal),
    "tokamax xla": lambda q, k, v, p: tokamax.dot_product_attention(q, k, v, bias=dense(p), is_causal=True, implementation="xla"),
    "tokamax xla_chunked": lambda q, k, v, p: chunked(q, k, v, bias=dense(p), is_causal=True),
    "tokamax FlexAttention(xla)": lambda q, k, v, p: flex(
        q, k, v,
        # score_mod sees the whole unscaled [B,H,T,t] logits array; the bias is built from iota inside
        score_mod=lambda s: s * scale + fn(p, jnp.arange(H)[None, :, None, None],
                                           jnp.arange(L)[:, None], jnp.arange(L)[None, :]),
        mask_mod=lambda shape: jnp.broadcast_to(causal, shape)),
    "posjax fused (interpret)": lambda q, k, v, p: fused_attention(
        q, k, v, q_pos_BQ=pos, k_pos_BK=pos, causal=True, score_mod=ScoreMod(fn, p)),
  }
  return paths

def loss(path, q, k, v, p):
  return jnp.sum(path(q, k, v, p) * ct)

print(f"B={B} L={L} H={H} G={G} D={D} float32, causal; errors are max|x - reference|")
import sys
SEL = sys.argv[1:]
for name, (fn, params) in scheme_fns().items():
  if SEL and name not in SEL: continue
  paths = make_paths(fn)
  res = {}
  for pname, path in paths.items():
    t = time.time()
    out = jax.jit(path)(q, k, v, params)
    g = jax.jit(jax.grad(functools.partial(loss, path), argnums=(0, 1, 2, 3)))(q, k, v, params)
    res[pname] = (out, g)
  ro, rg = res["reference(jnp)"]
  for pname, (o, g) in res.items():
    if pname.startswith("reference"): continue
    e_out = float(jnp.max(jnp.abs(o - ro)))
    e_qkv = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(g[:3], rg[:3]))
    pe = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30)), g[3], rg[3])
    pmag = jax.tree.map(lambda b: float(jnp.max(jnp.abs(b))), rg[3])
    print(f"{name:22s} {pname:28s} out {e_out:.1e}  dq/dk/dv {e_qkv:.1e}  dparams(rel) {pe}" )
  print(f"{name:22s} |dparams| of reference: {pmag}")
