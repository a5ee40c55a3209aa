"""`Scheme`: what the registry knows about one positional encoding.

A scheme reaches attention through at most four hooks (see DESIGN.md). A `Scheme` holds the pure
function for each hook it uses and nothing else; the hooks it uses are read off which functions are
set, so the two can never disagree.

Calling conventions (every callable takes the scheme's options, `Scheme.defaults` overridden by the
caller, as keyword arguments and ignores the ones it does not need):

  init(rng, *, num_heads, head_dim, dim, dtype, **options) -> dict[str, Array]
      learnable parameters, for schemes that have any (their names are `Scheme.params`).
  embed(params, positions, *, dim, **options) -> [..., dim]
      additive term on the token embeddings (the `embed` hook).
  rotate(x_BLHD, positions_BL, *, is_key, **options) -> x_BLHD
      applied to queries (`is_key=False`) and keys (`is_key=True`) (the `rotate` hook).
  score_mod(params, head, q_pos, k_pos, **options) -> bias
      elementwise logit bias; `head`, `q_pos`, `k_pos` are integer arrays that broadcast together
      (the `bias` hook).
  content(params, q_BQHD, k_BKHD, q_pos_BQ, k_pos_BK, **options) -> logits_BHQK
      extra logits that mix content and relative position (the `content` hook).
  check(**options) -> None
      raises ValueError for invalid option values (a RoPE scaling's factor, say), so that configs
      fail before anything is traced; `options()` calls it.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable, Mapping, Optional

HOOKS = ("embed", "rotate", "bias", "content")


@dataclasses.dataclass(frozen=True)
class Scheme:
  """One positional encoding, as models and configs see it."""

  name: str
  citation: str
  summary: str
  params: tuple[str, ...] = ()
  defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  init: Optional[Callable[..., dict]] = None
  embed: Optional[Callable[..., Any]] = None
  rotate: Optional[Callable[..., Any]] = None
  score_mod: Optional[Callable[..., Any]] = None
  content: Optional[Callable[..., Any]] = None
  check: Optional[Callable[..., None]] = None

  def __post_init__(self):
    object.__setattr__(self, "defaults", types.MappingProxyType(dict(self.defaults)))
    if self.params and self.init is None:
      raise ValueError(f"scheme {self.name!r} names parameters {self.params} but has no init")

  @property
  def hooks(self) -> frozenset[str]:
    """The hooks of DESIGN.md this scheme uses (empty for NoPE)."""
    fns = {"embed": self.embed, "rotate": self.rotate, "bias": self.score_mod,
           "content": self.content}
    return frozenset(h for h in HOOKS if fns[h] is not None)

  def options(self, **overrides) -> dict[str, Any]:
    """`defaults` with `overrides` applied; an unknown option or an invalid value is an error."""
    unknown = sorted(set(overrides) - set(self.defaults))
    if unknown:
      raise ValueError(
          f"scheme {self.name!r} has no option(s) {unknown}; its options are "
          f"{sorted(self.defaults) or 'none'}")
    options = {**self.defaults, **overrides}
    if self.check is not None:
      self.check(**options)
    return options
