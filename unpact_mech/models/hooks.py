"""The hook vocabulary both backends speak (TransformerLens names) and the intervention types.

Hook names and the shapes a hook function sees (B batch, T query positions of this forward, T_key key positions
(past + current), H heads, H_kv key/value heads, listed in execution order):

==================================  ====================  ==============================================================
name                                shape                 meaning
==================================  ====================  ==============================================================
``hook_embed``                      (B, T, d_model)       token embeddings (before GPT-2's position embeddings)
``blocks.L.hook_resid_pre``         (B, T, d_model)       residual stream entering block L
``blocks.L.attn.hook_v``            (B, T, H_kv, d_head)  value vectors (H_kv = key/value heads; GQA shares them)
``blocks.L.attn.hook_q``            (B, T, H, d_head)     query vectors, AFTER the rotary embedding (Llama); GPT-2 has
                                                          none, so there it is the query projection (bias included)
``blocks.L.attn.hook_k``            (B, T, H_kv, d_head)  key vectors of this forward's tokens, after the rotary
                                                          embedding (Llama) / the key projection (GPT-2); what the KV
                                                          cache stores (an edit here is cached for later steps)
``blocks.L.attn.hook_attn_scores``  (B, H, T, T_key)      attention logits before the softmax: ``q·k * scale`` plus the
                                                          additive mask, so masked entries hold ``finfo(dtype).min``
                                                          (-3.4e38 in float32; HF's convention, not TransformerLens'
                                                          -inf); ``softmax(scores, -1) == hook_pattern``
``blocks.L.attn.hook_pattern``      (B, H, T, T_key)      attention probabilities (after softmax)
``blocks.L.attn.hook_z``            (B, T, H, d_head)     per-head attention output before W_O
``blocks.L.hook_attn_out``          (B, T, d_model)       attention output added to the residual
``blocks.L.hook_resid_mid``         (B, T, d_model)       resid_pre + attn_out (derived here, see below)
``blocks.L.mlp.hook_pre``           (B, T, d_mlp)         input of the MLP's activation function; for gated MLPs
                                                          (Llama: ``act(gate) * up``) the GATE pre-activation
                                                          ``x @ W_gate``
``blocks.L.mlp.hook_post``          (B, T, d_mlp)         per-neuron activation that multiplies W_out: ``act(pre)``
                                                          (GPT-2), ``act(gate) * up`` (Llama); the input of the MLP's
                                                          output projection
``blocks.L.hook_mlp_out``           (B, T, d_model)       MLP output added to the residual
``blocks.L.hook_resid_post``        (B, T, d_model)       residual stream leaving block L
``ln_final.hook_normalized``        (B, T, d_model)       output of the final norm, weight (and bias) applied: what the
                                                          unembedding reads, ``hook_normalized @ W_U == logits``
==================================  ====================  ==============================================================

Differences from TransformerLens' ``HookedTransformer`` (which the names come from): ``attn.hook_q`` / ``hook_k``
are taken after the rotary embedding (HookedTransformer's ``hook_rot_q`` / ``hook_rot_k``), so that
``hook_attn_scores`` is computed from them directly; masked attention scores hold ``finfo.min`` rather than -inf;
``ln_final.hook_normalized`` includes the norm's weight and bias (HookedTransformer folds them into ``W_U`` by
default, which gives the same ``hook_normalized @ W_U == logits``).

The order of the table (and of :data:`BLOCK_KINDS`) is the order the forward computes them, which nnsight needs:
``hook_v`` comes before ``hook_q`` / ``hook_k`` because the rotary embedding runs after the value projection (GPT-2
computes q, k and v in one projection, whose output both backends edit in one go).

``hook_resid_mid`` is derived from ``resid_pre`` and ``attn_out`` for both backends, because editing
TransformerLens 4.3's native ``hook_resid_mid`` (an alias of the second norm's input) changes only the MLP input,
not the residual stream. An edit ``f`` at resid_mid is applied as ``attn_out' = f(pre + attn_out) - pre`` so the
residual carries ``f(resid_mid)`` exactly as TransformerLens' HookedTransformer would (up to float rounding).
A resid_mid that is only cached is computed beside the forward, not on its path: it is the one hook whose cached
value is not a node of the autograd graph (differentiate with respect to ``resid_pre`` and ``attn_out`` instead).

A hook function receives the activation and a :class:`HookContext` (which has ``.name``, so TransformerLens-style
``fn(activation, hook)`` functions work unchanged); it returns the (possibly new) activation, or ``None`` to leave it
unchanged. Positions are absolute positions in the batch's own (padded) coordinates: during KV-cached generation the
prompt forward has ``query_positions = 0..T0-1`` and each new token forward has a single position ``T0 + k``.
Helpers below translate a per-prompt position mask into the current forward.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from unpact_mech.errors import InputError

#: Per-block hook kinds in execution order (the order nnsight must visit them).
BLOCK_KINDS: tuple[str, ...] = (
    "hook_resid_pre",
    "attn.hook_v",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_attn_scores",
    "attn.hook_pattern",
    "attn.hook_z",
    "hook_attn_out",
    "hook_resid_mid",
    "mlp.hook_pre",
    "mlp.hook_post",
    "hook_mlp_out",
    "hook_resid_post",
)
#: Kinds a backend must implement natively (``hook_resid_mid`` is derived from the others).
NATIVE_BLOCK_KINDS: tuple[str, ...] = tuple(k for k in BLOCK_KINDS if k != "hook_resid_mid")
#: Hooks outside the blocks: ``hook_embed`` runs before block 0, ``ln_final.hook_normalized`` after the last block.
GLOBAL_HOOKS: tuple[str, ...] = ("hook_embed", "ln_final.hook_normalized")
#: Block kinds whose activation is (B, H, T, T_key) (a key axis, no per-position rows to edit).
KEY_AXIS_KINDS: tuple[str, ...] = ("attn.hook_attn_scores", "attn.hook_pattern")
_GLOBAL_ORDER = {"hook_embed": (-1, 0), "ln_final.hook_normalized": (1 << 30, 0)}
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class HookSite:
    """A parsed hook name: ``layer`` is None for global hooks."""

    name: str
    layer: int | None
    kind: str

    @property
    def order(self) -> tuple[int, int]:
        """Execution order key: embeddings first, then blocks in layer order (kinds in :data:`BLOCK_KINDS` order),
        then the final norm."""
        if self.layer is None:
            return _GLOBAL_ORDER[self.kind]
        return (self.layer, BLOCK_KINDS.index(self.kind))


def hook_name(layer: int, kind: str) -> str:
    """``hook_name(3, "hook_resid_post") -> "blocks.3.hook_resid_post"``."""
    if kind not in BLOCK_KINDS:
        raise ValueError(f"unknown block hook kind {kind!r}")
    return f"blocks.{layer}.{kind}"


def all_hook_names(n_layers: int, exclude: Iterable[str] = ()) -> list[str]:
    """The whole vocabulary of a model with ``n_layers`` blocks, in execution order; ``exclude``: kinds (block kinds
    or global names) the model's architecture does not have."""
    skip = set(exclude)
    names = [n for n in GLOBAL_HOOKS[:1] if n not in skip]
    names += [hook_name(L, k) for L in range(n_layers) for k in BLOCK_KINDS if k not in skip]
    return names + [n for n in GLOBAL_HOOKS[1:] if n not in skip]


def parse_hook(name: str, n_layers: int) -> HookSite:
    """Parse and validate a hook name against a model with ``n_layers`` blocks.

    Raises :class:`InputError` naming the valid forms if ``name`` is not in the vocabulary or the layer is out
    of range.
    """
    if name in GLOBAL_HOOKS:
        return HookSite(name, None, name)
    match = _BLOCK_RE.match(name)
    if match and match.group(2) in BLOCK_KINDS:
        layer = int(match.group(1))
        if not 0 <= layer < n_layers:
            raise InputError(f"hook {name!r}: layer {layer} out of range (model has layers 0..{n_layers - 1})")
        return HookSite(name, layer, match.group(2))
    forms = ", ".join(list(GLOBAL_HOOKS) + [f"blocks.L.{k}" for k in BLOCK_KINDS])
    raise InputError(f"unknown hook name {name!r}; valid names: {forms}")


@dataclass(frozen=True)
class HookContext:
    """What a hook function knows about the forward it runs in.

    ``query_positions``: (T,) long tensor, the absolute (padded-batch) positions of this forward's tokens.
    """

    name: str
    layer: int | None
    query_positions: Tensor


HookFn = Callable[[Tensor, HookContext], "Tensor | None"]


@dataclass(frozen=True)
class Intervention:
    """A function applied at a hook during a forward pass and during greedy generation.

    ``fn(activation, ctx)`` returns the edited activation (same shape) or None for "unchanged". ``prompt_only``:
    the function edits prompt positions only, so on a decoding step (one query at a position beyond the prompt) it is
    an exact no-op and :meth:`~unpact_mech.models.hooked.HookedLM.decode` skips it (which also lets finished rows
    leave the batch); :func:`edit_positions` and the attacks' ``edit_at_positions`` build such interventions.
    """

    hook: str
    fn: HookFn
    label: str = ""
    prompt_only: bool = False


def decoding_interventions(interventions: Sequence[Intervention]) -> list[Intervention]:
    """The interventions that can act on a decoding step (every one that is not ``prompt_only``)."""
    return [iv for iv in interventions if not iv.prompt_only]


def query_mask(mask: Tensor, ctx: HookContext) -> Tensor:
    """Slice a per-prompt position mask to the queries of the current forward.

    ``mask``: (B, T0) bool over prompt positions. Returns (B, T) bool for ``ctx.query_positions``; positions at or
    beyond T0 (generated tokens) are False.
    """
    pos = ctx.query_positions.to(mask.device)
    inside = pos < mask.shape[1]
    out = torch.zeros(mask.shape[0], pos.shape[0], dtype=torch.bool, device=mask.device)
    if inside.any():
        out[:, inside] = mask[:, pos[inside]]
    return out


def edit_positions(hook: str, mask: Tensor, edit: Callable[[Tensor], Tensor], label: str = "") -> Intervention:
    """Intervention applying ``edit`` to the vectors at masked positions of a (B, T, ...) activation.

    ``mask``: (B, T0) bool over the prompt positions of the batch. ``edit`` maps the selected rows (N, ...) to
    new rows of the same shape. An all-False mask is an exact no-op (the activation object is returned as is).
    """
    if hook.endswith(KEY_AXIS_KINDS):
        raise ValueError(
            "edit_positions works on (B, T, ...) activations; attention scores and patterns (B, H, T, T_key) need a "
            "key-axis intervention"
        )

    def fn(act: Tensor, ctx: HookContext) -> Tensor | None:
        sel = query_mask(mask, ctx)
        if not sel.any():
            return None
        out = act.clone()
        out[sel] = edit(act[sel])
        return out

    return Intervention(hook, fn, label, prompt_only=True)


def add_vector(hook: str, mask: Tensor, vector: Tensor, label: str = "") -> Intervention:
    """Add ``vector`` (d,) to the activation at every masked prompt position."""
    return edit_positions(hook, mask, lambda rows: rows + vector.to(rows), label or f"add@{hook}")


def positions_to_mask(positions: Sequence[Iterable[int]], width: int) -> Tensor:
    """Per-row position lists -> (B, width) bool mask."""
    mask = torch.zeros(len(positions), width, dtype=torch.bool)
    for row, pos in enumerate(positions):
        idx = list(pos)
        if idx:
            mask[row, torch.as_tensor(idx, dtype=torch.long)] = True
    return mask


def compose(fns: Sequence[Callable[[Tensor], Tensor | None]]) -> Callable[[Tensor], Tensor]:
    """Chain activation functions; a ``None`` result keeps the previous activation."""

    def run(act: Tensor) -> Tensor:
        for fn in fns:
            new = fn(act)
            if new is not None:
                if new.shape != act.shape:
                    raise ValueError(
                        f"hook function changed the activation shape {tuple(act.shape)} -> {tuple(new.shape)}"
                    )
                act = new
        return act

    return run
