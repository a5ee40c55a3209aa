exec(open("e2_grads.py").read().split("print(f\"B={B}")[0])
import sys
fn, params = scheme_fns()["fire"]
paths = make_paths(fn)
ro = paths["reference(jnp)"](q, k, v, params)
f = paths["posjax fused (interpret)"]
mode = sys.argv[1]
if mode == "jit":
  o = jax.jit(f)(q, k, v, params)
elif mode == "eager":
  o = f(q, k, v, params)
elif mode == "jit_fresh_params":
  p2 = jax.tree.map(lambda x: jnp.array(x), params); o = jax.jit(f)(q, k, v, p2)
elif mode == "jit_closed":
  o = jax.jit(lambda q, k, v: f(q, k, v, params))(q, k, v)
print(mode, float(jnp.abs(o - ro).max()), jax.tree.map(lambda x: (x.dtype, getattr(x, 'weak_type', None), type(x).__name__), params))
