"""Sandwich's bias is an inner product of sinusoids, so it can ride in the q/k head dimension of a
plain (bias-free) attention kernel: q' = [q, p_i / (c_h * scale)], k' = [k, p_j] with
p = [cos(i w), sin(i w)] (d̄ = 128 features), up to a per-row constant that softmax ignores.
Checked on CPU with tokamax's xla implementation (no bias argument) against posjax's dense bias."""
import functools, math, jax, jax.numpy as jnp, numpy as np
import tokamax
from posjax.encodings import registry, sandwich
from posjax.encodings.bias import materialize_bias
jax.config.update("jax_default_matmul_precision", "highest")
B, L, H, D = 2, 256, 4, 64
scale = 1 / math.sqrt(D)
s = registry.get("sandwich"); opts = s.options(num_heads=H); dbar = opts["sandwich_dim"]
ks = jax.random.split(jax.random.PRNGKey(0), 3)
q = jax.random.normal(ks[0], (B, L, H, D)); k = jax.random.normal(ks[1], (B, L, H, D)); v = jax.random.normal(ks[2], (B, L, H, D))
pos = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
bias = materialize_bias(functools.partial(s.score_mod, **opts), {}, H, pos, pos)
ref = tokamax.dot_product_attention(q, k, v, bias=bias, is_causal=True, implementation="xla")
kk = jnp.arange(1, dbar // 2 + 1, dtype=jnp.float32)
w = jnp.exp(-(2.0 * kk / dbar) * np.log(sandwich.BASE))
ang = jnp.arange(L, dtype=jnp.float32)[:, None] * w                 # [L, d̄/2]
p = jnp.concatenate([jnp.cos(ang), jnp.sin(ang)], -1)               # [L, d̄]
comp = 8.0 * (jnp.arange(H) + 1.0) / H                              # c_h of posjax's sandwich_bias
q_ext = jnp.concatenate([q, jnp.broadcast_to(p[None, :, None, :] / (comp[None, None, :, None] * scale), (B, L, H, dbar))], -1)
k_ext = jnp.concatenate([k, jnp.broadcast_to(p[None, :, None, :], (B, L, H, dbar))], -1)
v_ext = jnp.concatenate([v, jnp.zeros((B, L, H, dbar))], -1)         # same head dim for v (jax.nn/cuDNN pads anyway)
out = tokamax.dot_product_attention(q_ext, k_ext, v_ext, scale=scale, is_causal=True, implementation="xla")[..., :D]
print(f"sandwich_dim={dbar}: head dim {D} -> {D + dbar}; max|out - dense-bias ref| = {float(jnp.abs(out - ref).max()):.1e}")
bf = lambda x: x.astype(jnp.bfloat16)
out_bf_dense = tokamax.dot_product_attention(bf(q), bf(k), bf(v), bias=bf(bias), is_causal=True, implementation="xla").astype(jnp.float32)
out_bf_ext = tokamax.dot_product_attention(bf(q_ext), bf(k_ext), bf(v_ext), scale=scale, is_causal=True, implementation="xla")[..., :D].astype(jnp.float32)
print(f"bf16 inputs (CPU XLA): dense bf16 bias max err {float(jnp.abs(out_bf_dense - ref).max()):.1e}; "
      f"features-in-q/k max err {float(jnp.abs(out_bf_ext - ref).max()):.1e} (vs float32 reference)")
