"""Gradient (activation) checkpointing of the decoder layers for one unlearning run (``--gradient-checkpointing``).

Hugging Face's checkpointing stores only each decoder layer's input in the forward and recomputes the layer's
inside in the backward (``torch.utils.checkpoint`` with ``use_reentrant=False``), trading about one more forward per
step for activation memory (docs/bigger_models.md has the numbers). Two details of how the toolkit runs a model
decide how it is switched on:

* HF checkpoints a layer only while that layer's ``training`` flag is set, and the unlearning loop runs in eval mode
  (no dropout; the model attribution sees). So :meth:`GradientCheckpointing.active` sets ``training`` on the
  checkpointed layer modules alone — not recursively: their attention, MLP and dropout submodules stay in eval
  mode — for the optimizer step only. Evaluations between steps run with the layers in eval mode, hence without
  checkpointing; that matters because a checkpointed layer drops its KV cache (HF sets ``past_key_values=None``),
  which greedy decoding needs.
* The recomputation in the backward runs the layer's ``forward`` again, after the toolkit's forward has returned and
  its hooks are gone (TransformerLens bridge: the hook functions are removed when the forward's hook context exits;
  nnsight: the trace has ended). Measured on ``tiny`` with both backends (tests/unit/unlearning/
  test_gradient_checkpointing.py): cached activations are unaffected (recorded in the forward, they are nodes of the
  graph, and the recomputation yields the same values: RMU's cached ``hook_resid_post`` trains to the same weights),
  and so are edits of the residual stream between layers (``hook_resid_pre`` / ``hook_resid_post`` sit outside HF's
  checkpointed ``forward``: on the bridge's block wrapper, on the layer module's call in nnsight; keyguard's
  ``patch`` at the KeyTokens trains to the same weights). An edit INSIDE a layer (``attn.*``, ``mlp.*``,
  ``hook_attn_out``, ``hook_resid_mid``, ``hook_mlp_out``) is missing from the recomputation, and the gradient comes
  out silently wrong (in a probe on ``tiny``, x2 at ``blocks.0.mlp.hook_post`` changed gradient entries by up to
  1.9, at ``attn.hook_z`` by 25); :func:`check_interventions` refuses such a forward with an :class:`InputError`
  before its backward.

On exit everything is switched off again: the HF flags, the layers' ``training`` flags, and the forward hook that
``activation_checkpointing_enable`` puts on the input embedding (``enable_input_require_grads``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from unpact_mech.errors import InputError
from unpact_mech.models.hooks import parse_hook

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch

    from unpact_mech.models.hooks import Intervention

#: ``torch.utils.checkpoint`` options: the non-reentrant implementation (it supports inputs that do not require grad,
#: keyword arguments and gradients of intermediate activations such as the cached hooks of RMU).
CHECKPOINT_KWARGS = {"use_reentrant": False}


#: Hook sites outside the checkpointed part of a layer (its HF ``forward``): edits there are seen by the recomputation.
OUTSIDE_CHECKPOINT = ("hook_embed", "ln_final.hook_normalized", "hook_resid_pre", "hook_resid_post")


def check_interventions(interventions: "Sequence[Intervention]", n_layers: int) -> None:
    """Raise :class:`InputError` if an intervention edits an activation inside a decoder layer, which the backward's
    recomputation of that layer would not repeat (the gradient would be silently wrong)."""
    inside = [iv.hook for iv in interventions if parse_hook(iv.hook, n_layers).kind not in OUTSIDE_CHECKPOINT]
    if inside:
        raise InputError(
            f"--gradient-checkpointing: the training forward edits {', '.join(sorted(set(inside)))} inside a decoder "
            "layer, which the backward's recomputation of the layer would not repeat (wrong gradients); only edits of "
            f"{', '.join(OUTSIDE_CHECKPOINT)} work with it. Train without --gradient-checkpointing"
        )


def checkpointed_layers(hf: "torch.nn.Module") -> list["torch.nn.Module"]:
    """The modules HF checkpoints (its ``GradientCheckpointingLayer`` instances whose flag is set)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in hf.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]


class GradientCheckpointing:
    """HF activation checkpointing of ``hf``'s decoder layers, on while the object is entered as a context.

    >>> with GradientCheckpointing(model.hf) as gc:       # doctest: +SKIP
    ...     with gc.active():
    ...         loss = ...; loss.backward()
    """

    def __init__(self, hf: "torch.nn.Module") -> None:
        self.hf = hf
        self.layers: list[torch.nn.Module] = []

    def __enter__(self) -> "GradientCheckpointing":
        hf = self.hf
        if not getattr(hf, "supports_gradient_checkpointing", False):
            raise InputError(f"--gradient-checkpointing: {type(hf).__name__} does not support gradient checkpointing")
        # transformers 5 renamed gradient_checkpointing_enable (a deprecated alias now) to activation_checkpointing_*
        enable = getattr(hf, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs=dict(CHECKPOINT_KWARGS))
        else:  # pragma: no cover - transformers < 5
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(CHECKPOINT_KWARGS))
        self.layers = checkpointed_layers(hf)
        if not self.layers:
            self._disable()
            raise InputError(f"--gradient-checkpointing: {type(hf).__name__} has no checkpointable decoder layer")
        return self

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Checkpoint within the context: the layers' own ``training`` flags set (their submodules untouched)."""
        before = [layer.training for layer in self.layers]
        for layer in self.layers:
            layer.training = True
        try:
            yield
        finally:
            for layer, flag in zip(self.layers, before):
                layer.training = flag

    def _disable(self) -> None:
        hf = self.hf
        disable = getattr(hf, "activation_checkpointing_disable", None)
        if disable is not None:
            disable()
        else:  # pragma: no cover - transformers < 5
            hf.gradient_checkpointing_disable()
        if hasattr(hf, "disable_input_require_grads"):
            hf.disable_input_require_grads()  # HF's disable leaves the embedding hook of its enable in place

    def __exit__(self, *exc: object) -> None:
        self._disable()
        self.layers = []


@contextlib.contextmanager
def maybe_checkpointing(hf: "torch.nn.Module", enabled: bool) -> Iterator[GradientCheckpointing | None]:
    """:class:`GradientCheckpointing` of ``hf`` when ``enabled``, else nothing (yields None)."""
    if not enabled:
        yield None
        return
    with GradientCheckpointing(hf) as gc:
        yield gc
