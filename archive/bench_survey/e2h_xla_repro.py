"""Standalone: jit vs eager of  sum(relu(x[...,None]*w1 + b1) * w2.T[head], -1) + b2[head]  on CPU."""
import sys, jax, jax.numpy as jnp, numpy as np
def mlp(x, w1, b1, w2, b2, head):
  hidden = jax.nn.relu(x[..., None] * w1 + b1)
  return jnp.sum(hidden * w2.T[head], axis=-1) + b2[head]
rng = np.random.default_rng(0)
for H, L, W in [(4, 128, 32), (4, 64, 32), (4, 32, 32), (2, 128, 32), (4, 128, 16), (4, 128, 8)]:
  x = jnp.asarray(rng.uniform(0, 1, (1, 1, L, L)), jnp.float32)
  w1, b1 = jnp.asarray(rng.normal(size=W), jnp.float32), jnp.asarray(rng.normal(size=W), jnp.float32)
  w2, b2 = jnp.asarray(rng.normal(size=(W, H)), jnp.float32), jnp.asarray(rng.normal(size=H), jnp.float32)
  head = jnp.arange(H, dtype=jnp.int32)[None, :, None, None]
  e = mlp(x, w1, b1, w2, b2, head); j = jax.jit(mlp)(x, w1, b1, w2, b2, head)
  # explicit head-broadcast version without gather
  def mlp2(x, w1, b1, w2, b2):
    hidden = jax.nn.relu(x[..., None] * w1 + b1)          # [1,1,L,L,W]
    return jnp.einsum("...w,wh->...h", hidden, w2).transpose(0, 4, 2, 3, 1)[..., 0] + b2[None, :, None, None]
  j2 = jax.jit(mlp2)(x, w1, b1, w2, b2)
  print(f"H={H} L={L} W={W}: max|jit-eager| {float(jnp.abs(e - j).max()):.3g}   einsum-form jit vs eager {float(jnp.abs(e - j2).max()):.3g}")
print(jax.__version__, jax.lib.__version__ if hasattr(jax.lib, '__version__') else '')
