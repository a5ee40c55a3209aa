"""Grid for the XLA:CPU jit-vs-eager mismatch of posjax's fire_mlp expression (jax/jaxlib 0.10.2)."""
import jax, jax.numpy as jnp, numpy as np
def mlp(x, w1, b1, w2, b2, head):
  hidden = jax.nn.relu(x[..., None] * w1 + b1)
  return jnp.sum(hidden * w2.T[head], axis=-1) + b2[head]
rng = np.random.default_rng(0)
W = 32
for H in (1, 2, 4, 8, 12, 16):
  row = []
  for L in (64, 128, 256, 512):
    x = jnp.asarray(rng.uniform(0, 1, (1, 1, L, L)), jnp.float32)
    w1, b1 = jnp.asarray(rng.normal(size=W), jnp.float32), jnp.asarray(rng.normal(size=W), jnp.float32)
    w2, b2 = jnp.asarray(rng.normal(size=(W, H)), jnp.float32), jnp.asarray(rng.normal(size=H), jnp.float32)
    head = jnp.arange(H, dtype=jnp.int32)[None, :, None, None]
    e = mlp(x, w1, b1, w2, b2, head); j = jax.jit(mlp)(x, w1, b1, w2, b2, head)
    row.append(f"L={L}: {float(jnp.abs(e - j).max()):.1e}")
  print(f"H={H:2d}  " + "  ".join(row), flush=True)
