"""FIRE again, every path run op-by-op (jax.disable_jit) to sidestep the XLA:CPU miscompile of the
jitted dense FIRE bias (see e2h_xla_repro.py); the posjax fused path is jitted as before."""
exec(open("e2_grads.py").read().split("print(f\"B={B}")[0])
fn, params = scheme_fns()["fire"]
paths = make_paths(fn)
res = {}
for pname, path in paths.items():
  if pname.startswith("posjax"):
    o = jax.jit(path)(q, k, v, params); g = jax.jit(jax.grad(functools.partial(loss, path), argnums=(0,1,2,3)))(q, k, v, params)
  else:
    with jax.disable_jit():
      o = path(q, k, v, params); g = jax.grad(functools.partial(loss, path), argnums=(0,1,2,3))(q, k, v, params)
  res[pname] = (o, g)
ro, rg = res["reference(jnp)"]
for pname, (o, g) in res.items():
  if pname.startswith("reference"): continue
  e_qkv = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(g[:3], rg[:3]))
  pe = {kk: f"{float(jnp.max(jnp.abs(g[3][kk] - rg[3][kk])) / jnp.max(jnp.abs(rg[3][kk]))):.1e}" for kk in rg[3] if kk != "b2"}
  print(f"fire(eager ref) {pname:28s} out {float(jnp.max(jnp.abs(o - ro))):.1e} dq/dk/dv {e_qkv:.1e} dparams(rel, b2 omitted: its true gradient is 0) {pe}")
