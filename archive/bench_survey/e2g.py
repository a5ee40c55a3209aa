import jax, jax.numpy as jnp, numpy as np
from posjax.encodings import fire, registry
H, L = 4, 128
s = registry.get("fire"); opts = s.options()
params = s.init(jax.random.split(jax.random.PRNGKey(0), 5)[4], num_heads=H, head_dim=64, dim=256, dtype=jnp.float32, **opts)
head = jnp.arange(H, dtype=jnp.int32)[None, :, None, None]
qp = jnp.arange(L, dtype=jnp.int32)[None, None, :, None]; kp = jnp.arange(L, dtype=jnp.int32)[None, None, None, :]
xi = lambda p: fire.fire_input(p, qp, kp)
print("fire_input eager vs jit", float(jnp.abs(xi(params) - jax.jit(xi)(params)).max()))
x = xi(params)
m = lambda p, x: fire.fire_mlp(p, x, head)
print("fire_mlp  eager vs jit", float(jnp.abs(m(params, x) - jax.jit(m)(params, x)).max()))
# numpy float64 reference of the MLP at the worst element
w1, b1, w2, b2 = (np.asarray(params[n], np.float64) for n in ("w1", "b1", "w2", "b2"))
xx = np.asarray(x, np.float64)[0, 0, 89, 0]
for h in range(H):
  ref = (np.maximum(xx * w1 + b1, 0) * w2[:, h]).sum() + b2[h]
  print(h, "numpy", ref, "eager", float(m(params, x)[0, h, 89, 0]), "jit", float(jax.jit(m)(params, x)[0, h, 89, 0]))
# simpler: gather with broadcast head index
g = lambda w2: w2.T[head]
print("w2.T[head] eager vs jit", float(jnp.abs(g(params["w2"]) - jax.jit(g)(params["w2"])).max()), g(params["w2"]).shape)
