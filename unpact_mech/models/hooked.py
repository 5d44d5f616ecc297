"""``HookedLM``: the one model object shared by unlearning, attribution and recovery.

It owns the HF causal LM (``.hf``): unlearning updates exactly these parameters. The backend
(TransformerLens bridge or nnsight) wraps the same module, so a weight update is visible to attribution and
recovery with no reload and no copy. The only copy is the explicit, frozen :meth:`HookedLM.reference_copy`
(the reference of ga_klr, npo_klr, rmu and keyguard, and patching from the original).

One small interface:

* :meth:`forward` — logits for a batch, with ``interventions`` (functions at hook names) and ``cache`` (hook
  names to record); works under ``torch.enable_grad()`` so cached activations can be differentiated;
* :meth:`run_with_cache` — ``(logits, cache)``, every hook or those a list / predicate selects;
* :meth:`embed` — token embeddings, to differentiate with respect to (pass them back as ``inputs_embeds``);
* :meth:`generate` — greedy decoding with a KV cache, interventions active on every step;
* :meth:`reference_copy`, :meth:`save` / :func:`~unpact_mech.models.loading.load_model`;
* :meth:`forward_through` — run forwards through a distributed wrapper of ``.hf`` (``accelerator.prepare``).

TransformerLens-style conveniences on top (docs/hooks.md): ``model(ids)`` returns the logits tensor,
:meth:`hooks` (context manager) and :meth:`run_with_hooks` take ``fwd_hooks=[(name, fn(act, hook))]``,
:meth:`hook_names` lists the vocabulary, :meth:`to_tokens` / :meth:`to_str_tokens` / :meth:`to_string` tokenise.
"""

from __future__ import annotations

import contextlib
import copy
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from unpact_mech.errors import InputError
from unpact_mech.models.arch import Weights, architecture_for, shape_from_config
from unpact_mech.models.backends import make_backend
from unpact_mech.models.hooks import (
    HookContext,
    HookSite,
    Intervention,
    all_hook_names,
    compose,
    decoding_interventions,
    hook_name,
    parse_hook,
)
from unpact_mech.utils import one_or_many

#: Greedy answer length cap of :meth:`HookedLM.generate` and every evaluation: fits a one-sentence answer (measured
#: in :mod:`unpact_mech.scoring.generation`).
DEFAULT_MAX_NEW_TOKENS = 32
#: :meth:`HookedLM.decode` with ``drop_finished`` removes finished rows once this share of the batch has stopped.
DROP_FRACTION = 0.25

#: ``fwd_hooks`` entries: ``(name, fn)`` with ``fn(activation, hook) -> Tensor | None`` (``hook`` is a
#: :class:`HookContext`: ``.name``, ``.layer``, ``.query_positions``), ``(predicate(name) -> bool, fn)``, or an
#: :class:`Intervention`.
FwdHook = tuple[str | Callable[[str], bool], Callable[..., Tensor | None]] | Intervention
#: ``names_filter`` of :meth:`HookedLM.run_with_cache`: None (every hook), one name, a list of names, or a predicate.
NamesFilter = str | Sequence[str] | Callable[[str], bool] | None


@dataclass
class ForwardOutput:
    """``logits`` (B, T_kept, V); ``cache`` hook name -> activation; ``past_key_values`` when ``use_cache``."""

    logits: Tensor
    cache: dict[str, Tensor] = field(default_factory=dict)
    past_key_values: Any = None


def position_ids_from_mask(attention_mask: Tensor, n_query: int) -> Tensor:
    """Position ids for the last ``n_query`` tokens of a left-padded batch: ``cumsum(mask) - 1`` (pads -> 0).

    Transformers 5.x does not derive them from the mask, so left-padded rows need them explicitly.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -n_query:]


class HookedLM:
    """A causal LM plus one interpretability backend over the same module. Build it with ``load_model``."""

    def __init__(
        self,
        hf,
        tokenizer,
        *,
        source_dir: str | Path,
        backend: str = "transformer_lens",
        name: str | None = None,
        lineage: list[dict[str, Any]] | None = None,
        prompt_format=None,
    ) -> None:
        from unpact_mech.scoring.prompt import default_prompt_format

        hf.eval()
        self.hf = hf
        self.tokenizer = tokenizer
        self.config = hf.config
        self.arch = architecture_for(hf.config)
        self.shape = shape_from_config(hf.config)
        self.source_dir = Path(source_dir)
        self.name = name or self.source_dir.name
        self.lineage: list[dict[str, Any]] = list(lineage or [])
        # Canonical (HF) names, captured before the backend wraps submodules: the TransformerLens bridge
        # renames modules in place (``..._original_component...``) but the tensors stay the same objects.
        self._state: dict[str, Tensor] = dict(hf.state_dict(keep_vars=True))
        self._params: dict[str, torch.nn.Parameter] = dict(hf.named_parameters())
        self.weights = Weights(self._params, self.arch, self.shape, hf.config)
        self.backend = make_backend(backend, hf, tokenizer, self.source_dir, self.arch, self.shape)
        self.prompt_format = prompt_format or default_prompt_format(tokenizer)
        self._missing_hooks: dict[str, str] = dict(self.arch.missing_hooks)
        self._hook_names: list[str] = all_hook_names(self.shape.n_layers, exclude=self._missing_hooks)
        self._context_hooks: list[Intervention] = []  # added by ``with model.hooks(...)``

    # -- identity -------------------------------------------------------------------------------------------------
    def __repr__(self) -> str:
        s = self.shape
        return (
            f"HookedLM({self.name!r}, {self.arch.family}, layers={s.n_layers}, heads={s.n_heads}, "
            f"d_model={s.d_model}, vocab={s.d_vocab}, backend={self.backend.name!r})"
        )

    @property
    def device(self) -> torch.device:
        return next(iter(self._params.values())).device

    @property
    def dtype(self) -> torch.dtype:
        """The weights' (and activations') dtype (``load_model(..., dtype=)``)."""
        return next(iter(self._params.values())).dtype

    @property
    def pad_token_id(self) -> int:
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return int(pad if pad is not None else 0)

    @property
    def stop_token_ids(self) -> list[int]:
        """Token ids that end a greedy answer (EOS of tokenizer and generation config)."""
        ids: set[int] = set()
        for source in (self.tokenizer.eos_token_id, getattr(self.hf.generation_config, "eos_token_id", None)):
            if source is None:
                continue
            ids.update([source] if isinstance(source, int) else source)
        return sorted(ids)

    @property
    def has_context_hooks(self) -> bool:
        """Whether a :meth:`hooks` context is active (every forward then runs its hooks)."""
        return bool(self._context_hooks)

    def check_length(self, n_tokens: int, where: str) -> None:
        """Raise :class:`InputError` if ``n_tokens`` exceeds the model's context window."""
        if n_tokens > self.shape.n_ctx:
            raise InputError(f"{where}: {n_tokens} tokens exceed the model's context of {self.shape.n_ctx} tokens")

    # -- parameters (canonical HF names) ------------------------------------------------------------------------
    def named_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        """Parameters under their HF names (what unlearning trains; regexes select from these names)."""
        return iter(self._params.items())

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return iter(self._params.values())

    def state_dict(self) -> dict[str, Tensor]:
        """Detached tensors under HF names (tied weights appear under both names, as in HF)."""
        return {k: v.detach() for k, v in self._state.items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Copy ``state`` into the model's tensors in place (every key must exist; shapes must match)."""
        unknown = sorted(set(state) - set(self._state))
        if unknown:
            raise KeyError(f"unknown parameter names: {unknown[:5]}")
        for name, value in state.items():
            self._state[name].copy_(value)

    def _rebind_tensors(self, replacement: dict[int, Tensor]) -> None:
        """Point this model's views (:meth:`named_parameters`, :meth:`state_dict`, :attr:`weights`) at new tensors:
        ``replacement`` maps ``id(old tensor)`` to the tensor that took its place in ``self.hf`` (tied weights: one
        entry for both names). For code that replaces ``hf``'s parameters, e.g. FSDP's ``fully_shard``
        (:mod:`unpact_mech.unlearning.fsdp`); tensors without an entry stay."""
        for view in (self._params, self._state):  # in place: ``weights`` reads ``_params``
            for name, tensor in view.items():
                new = replacement.get(id(tensor))
                if new is not None:
                    view[name] = new  # type: ignore[assignment]

    @contextlib.contextmanager
    def frozen(self) -> Iterator["HookedLM"]:
        """Temporarily set ``requires_grad=False`` on all parameters (backward then skips weight gradients)."""
        flags = {n: p.requires_grad for n, p in self._params.items()}
        try:
            for p in self._params.values():
                p.requires_grad_(False)
            yield self
        finally:
            for n, p in self._params.items():
                p.requires_grad_(flags[n])

    @contextlib.contextmanager
    def forward_through(self, wrapper: torch.nn.Module) -> Iterator["HookedLM"]:
        """Within the context, every forward calls ``wrapper`` instead of ``self.hf``.

        ``wrapper`` must wrap this model's own HF module (``wrapper.module[.module...] is self.hf``), e.g. the
        ``DistributedDataParallel`` returned by ``accelerator.prepare(model.hf)``: DDP synchronises gradients only
        for forwards that go through its own ``forward``, so a training loop that calls :meth:`forward` on a
        multi-process run needs this. Hooks, caches and interventions work unchanged (they sit on ``hf``'s
        submodules). ``wrapper is self.hf`` (what ``prepare`` returns on one process) is a no-op.
        """
        inner = wrapper
        while inner is not self.hf and isinstance(getattr(inner, "module", None), torch.nn.Module):
            inner = inner.module
        if inner is not self.hf:
            raise ValueError(f"{type(wrapper).__name__} does not wrap this model's HF module")
        with self.backend.calling(wrapper):
            yield self

    # -- hook vocabulary -------------------------------------------------------------------------------------------
    def hook_names(self) -> list[str]:
        """Every hook name this model has, in execution order (see :mod:`unpact_mech.models.hooks`)."""
        return list(self._hook_names)

    def _site(self, name: str) -> HookSite:
        """Parse ``name`` for this model: :class:`InputError` if it is unknown, out of range, or a hook this
        architecture cannot have."""
        site = parse_hook(name, self.shape.n_layers)
        if site.kind in self._missing_hooks:
            raise InputError(
                f"hook {name!r} does not exist on {self.arch.family} models ({self._missing_hooks[site.kind]})"
            )
        return site

    def _names(self, names_filter: NamesFilter) -> list[str]:
        if names_filter is None:
            return self.hook_names()
        if isinstance(names_filter, str):
            names = [names_filter]
        elif callable(names_filter):
            return [n for n in self._hook_names if names_filter(n)]
        else:
            names = list(names_filter)
        for name in names:
            self._site(name)
        return names

    def _as_interventions(self, fwd_hooks: Sequence[FwdHook]) -> list[Intervention]:
        out: list[Intervention] = []
        for entry in fwd_hooks:
            if isinstance(entry, Intervention):
                self._site(entry.hook)
                out.append(entry)
                continue
            try:
                name, fn = entry
            except (TypeError, ValueError):
                raise TypeError(f"fwd_hooks entries are (name, fn) pairs or Interventions, got {entry!r}") from None
            label = getattr(fn, "__name__", "")
            names = [n for n in self._hook_names if name(n)] if callable(name) else [self._site(name).name]
            out += [Intervention(n, fn, label) for n in names]
        return out

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Sequence[FwdHook] = ()) -> Iterator["HookedLM"]:
        """Within the context, every forward (``model(ids)``, :meth:`forward`, :meth:`run_with_cache`,
        :meth:`generate` on every step) runs ``fwd_hooks`` — TransformerLens' ``model.hooks(fwd_hooks=...)``.

        An entry is ``(name, fn)`` (or ``(predicate, fn)``, applied at every hook name the predicate accepts) with
        ``fn(activation, hook)`` returning the edited activation or None (``hook.name``, ``hook.layer``,
        ``hook.query_positions``, see :class:`HookContext`), or an :class:`Intervention`. Names are validated on
        entry. Context hooks run before a call's own ``interventions`` at the same hook; contexts nest.
        """
        added = self._as_interventions(fwd_hooks)
        previous = self._context_hooks
        self._context_hooks = previous + added
        try:
            yield self
        finally:
            self._context_hooks = previous

    # -- tokens ----------------------------------------------------------------------------------------------------
    def _encode(self, text: str, prepend_bos: bool | None) -> list[int]:
        tok = self.tokenizer
        ids = list(tok(text, add_special_tokens=False)["input_ids"])
        has_bos = tok.bos_token_id is not None and tok.bos_token is not None
        if prepend_bos is None:  # as the prompt format does: BOS unless the text already starts with it
            prepend_bos = has_bos and not text.startswith(tok.bos_token)
        elif prepend_bos and not has_bos:
            raise InputError(f"to_tokens: prepend_bos=True, but the tokenizer of {self.name} has no BOS token")
        return [tok.bos_token_id] + ids if prepend_bos else ids

    def _tokenize(
        self, text: str | Sequence[str], prepend_bos: bool | None, padding_side: str
    ) -> tuple[Tensor, Tensor]:
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise TypeError("to_tokens takes a string or a non-empty list of strings")
        rows = [self._encode(t, prepend_bos) for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            span = slice(0, len(row)) if padding_side == "right" else slice(width - len(row), width)
            ids[i, span] = torch.tensor(row, dtype=torch.long)
            mask[i, span] = 1
        return ids.to(self.device), mask.to(self.device)

    def to_tokens(
        self, text: str | Sequence[str], prepend_bos: bool | None = None, padding_side: str = "right"
    ) -> Tensor:
        """Token ids (B, T) of a string (B = 1) or a list of strings (padded with ``pad_token_id``).

        ``prepend_bos``: True puts the BOS token first (:class:`InputError` if the tokenizer has none), False never;
        None (default) does what the prompt format does: BOS when the tokenizer has one and the text does not
        already start with it. No other special tokens are added.
        """
        return self._tokenize(text, prepend_bos, padding_side)[0]

    def to_str_tokens(
        self, text_or_ids: str | Sequence[str] | Tensor | Sequence[int], prepend_bos: bool | None = None
    ) -> list[str] | list[list[str]]:
        """One string per token: of a text (tokenised as :meth:`to_tokens`), of a 1-D id sequence, or of a (1, T)
        tensor; a list of texts or a (B > 1, T) tensor gives one list per row. ``"".join(model.to_str_tokens(text,
        prepend_bos=False)) == text`` for any text the tokenizer round-trips."""
        if isinstance(text_or_ids, str):
            return self._str_tokens(self.to_tokens(text_or_ids, prepend_bos)[0])
        if isinstance(text_or_ids, Sequence) and text_or_ids and all(isinstance(t, str) for t in text_or_ids):
            return [self._str_tokens(torch.tensor(self._encode(t, prepend_bos))) for t in text_or_ids]
        ids = torch.as_tensor(text_or_ids)
        if ids.dim() == 2:
            if ids.shape[0] != 1:
                return [self._str_tokens(row) for row in ids]
            ids = ids[0]
        if ids.dim() != 1:
            raise ValueError(f"to_str_tokens takes text, a 1-D id sequence or a 2-D id tensor, got {ids.dim()}-D")
        return self._str_tokens(ids)

    def _str_tokens(self, ids: Tensor) -> list[str]:
        return self.tokenizer.batch_decode([[int(i)] for i in ids.tolist()], clean_up_tokenization_spaces=False)

    def to_string(self, ids: Tensor | Sequence[int]) -> str | list[str]:
        """Decode (T,) ids to a string, (B, T) ids to one string per row (special tokens kept)."""
        ids = torch.as_tensor(ids)
        if ids.dim() == 2:
            return [self.to_string(row) for row in ids]
        return self.tokenizer.decode(ids.tolist(), clean_up_tokenization_spaces=False)

    def _input_ids(self, inputs: Any, kwargs: dict[str, Any]) -> Any:
        """Text (a string or a list of strings) -> token ids (BOS as :meth:`to_tokens`), with the attention mask of a
        padded list unless one is given; ids and None pass through."""
        if isinstance(inputs, str) or (
            isinstance(inputs, Sequence) and inputs and all(isinstance(t, str) for t in inputs)
        ):
            ids, mask = self._tokenize(inputs, None, "right")
            if not bool(mask.all()):
                kwargs.setdefault("attention_mask", mask)
            return ids
        return inputs

    # -- forward ---------------------------------------------------------------------------------------------------
    def embed(self, input_ids: Tensor) -> Tensor:
        """Token embeddings (B, T, d_model) of ``input_ids`` (``W_E[input_ids]``)."""
        return torch.nn.functional.embedding(input_ids, self.weights.W_E)

    def unembed(self, normalized: Tensor) -> Tensor:
        """Logits (..., d_vocab) from final-norm outputs (..., d_model) (the ``ln_final.hook_normalized``
        activation): ``normalized @ W_U``, what the model's own head computes (docs/hooks.md)."""
        return torch.nn.functional.linear(normalized, self.weights.W_U.T)  # W_U.T: the (V, d) head weight itself

    def _build_hooks(
        self,
        interventions: Sequence[Intervention],
        cache: Sequence[str],
        query_positions: Tensor,
        store: dict[str, Tensor],
    ) -> dict[str, list[Callable[[Tensor], Tensor | None]]]:
        """Turn interventions and cache requests into per-hook function lists (resid_mid derived, see hooks.py)."""
        fns: dict[str, list[Callable[[Tensor], Tensor | None]]] = defaultdict(list)
        mid: dict[int, list[Callable[[Tensor], Tensor | None]]] = defaultdict(list)

        def target(site):
            return mid[site.layer] if site.kind == "hook_resid_mid" else fns[site.name]

        for iv in interventions:
            site = self._site(iv.hook)
            ctx = HookContext(site.name, site.layer, query_positions)
            target(site).append(lambda act, f=iv.fn, c=ctx: f(act, c))
        for name in cache:
            site = self._site(name)
            target(site).append(lambda act, n=name: store.__setitem__(n, act))
        for layer, chain in mid.items():
            slot: dict[str, Tensor] = {}
            run_mid = compose(chain)
            fns[hook_name(layer, "hook_resid_pre")].append(lambda act, s=slot: s.__setitem__("pre", act))

            def attn_edit(attn: Tensor, s=slot, run=run_mid) -> Tensor:
                pre = s["pre"]
                resid_mid = pre + attn
                new = run(resid_mid)
                return attn if new is resid_mid else new - pre

            fns[hook_name(layer, "hook_attn_out")].append(attn_edit)
        return fns

    def forward(
        self,
        input_ids: Tensor | None = None,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        interventions: Sequence[Intervention] = (),
        cache: Sequence[str] = (),
        past_key_values: Any = None,
        use_cache: bool = False,
        query_offset: int = 0,
        logits_to_keep: int | Tensor | None = None,
    ) -> ForwardOutput:
        """Run the model once through the backend.

        ``input_ids`` (B, T) or ``inputs_embeds`` (B, T, d). ``attention_mask`` (B, T_past + T) for padded
        batches (position ids are then derived from it). ``query_offset``: absolute position of this forward's
        first token (non-zero only for KV-cached decoding). ``logits_to_keep=k`` computes logits for the last
        ``k`` positions only (a 1-D index tensor keeps those positions, as in HF). Interventions and cached
        activations use the shapes documented in :mod:`unpact_mech.models.hooks`; the cache holds the values
        after interventions at the same hook. Hooks of an enclosing :meth:`hooks` context run first.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        device = self.device  # inputs built on the CPU follow the model (no-ops there)
        input_ids = None if input_ids is None else input_ids.to(device)
        inputs_embeds = None if inputs_embeds is None else inputs_embeds.to(device, self.dtype)  # differentiable
        attention_mask = None if attention_mask is None else attention_mask.to(device)
        position_ids = None if position_ids is None else position_ids.to(device)
        n_query = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        query_positions = torch.arange(query_offset, query_offset + n_query, device=self.device)
        store: dict[str, Tensor] = {}
        interventions, cache = one_or_many(interventions) or (), one_or_many(cache) or ()  # one hook name is one
        if self._context_hooks:
            interventions = [*self._context_hooks, *interventions]
        fns = self._build_hooks(interventions, cache, query_positions, store)
        embed_fns = fns.pop("hook_embed", None)
        if embed_fns is not None:  # handled here, identically for every backend
            if inputs_embeds is None:
                inputs_embeds, input_ids = self.embed(input_ids), None
            inputs_embeds = compose(embed_fns)(inputs_embeds)
        model_inputs: dict[str, Any] = {"use_cache": use_cache}
        if input_ids is not None:
            model_inputs["input_ids"] = input_ids
        else:
            model_inputs["inputs_embeds"] = inputs_embeds
        if attention_mask is not None:
            model_inputs["attention_mask"] = attention_mask
            if position_ids is None:
                position_ids = position_ids_from_mask(attention_mask, n_query)
        if position_ids is not None:
            model_inputs["position_ids"] = position_ids
        if past_key_values is not None:
            model_inputs["past_key_values"] = past_key_values
        if logits_to_keep is not None:
            model_inputs["logits_to_keep"] = logits_to_keep
        hooks = {name: compose(chain) for name, chain in fns.items()}
        out = self.backend.run(model_inputs, hooks)
        return ForwardOutput(out.logits, store, out.past_key_values if use_cache else None)

    def __call__(self, input_ids: Tensor | str | Sequence[str] | None = None, **kwargs: Any) -> Tensor:
        """``model(ids, **forward_kwargs)`` -> the logits tensor (B, T_kept, V), as TransformerLens' models return;
        :meth:`forward` returns the whole :class:`ForwardOutput`. Text is tokenised as :meth:`to_tokens`."""
        return self.forward(self._input_ids(input_ids, kwargs), **kwargs).logits

    def run_with_cache(
        self,
        input_ids: Tensor | str | Sequence[str] | None = None,
        names_filter: NamesFilter = None,
        *,
        names: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """``(logits, cache)`` with the activations (after any edits) at the hooks ``names_filter`` selects.

        ``names_filter``: None caches every hook of :meth:`hook_names` (large: prefer a filter on real models), a
        name or a list of names, or a predicate ``fn(name) -> bool`` over :meth:`hook_names`. ``names=`` is the older
        spelling of a list. ``kwargs`` go to :meth:`forward` (``attention_mask``, ``interventions``, ...); under
        ``torch.enable_grad()`` the cached tensors are graph nodes.
        """
        if names is not None:
            if names_filter is not None:
                raise ValueError("pass names_filter or names, not both")
            names_filter = names
        input_ids = self._input_ids(input_ids, kwargs)
        out = self.forward(input_ids, cache=self._names(names_filter), **kwargs)
        return out.logits, out.cache

    def run_with_hooks(
        self, input_ids: Tensor | str | Sequence[str] | None = None, fwd_hooks: Sequence[FwdHook] = (), **kwargs: Any
    ) -> Tensor:
        """Logits of one forward with ``fwd_hooks`` active (entries as in :meth:`hooks`); the same as
        ``forward(ids, interventions=[Intervention(name, fn), ...]).logits``."""
        with self.hooks(fwd_hooks):
            return self(input_ids, **kwargs)

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        interventions: Sequence[Intervention] = (),
        drop_finished: bool = False,
    ) -> Tensor:
        """Greedy decoding with a KV cache; returns the new tokens (B, n <= max_new_tokens).

        ``input_ids`` is a left-padded prompt batch (positions in the interventions' coordinates). Interventions
        run on the prompt forward and on every decoding step (with ``query_positions = T0 + step``). A row that
        emits a stop token is padded with ``pad_token_id`` afterwards. ``drop_finished``: see :meth:`decode`.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = self.forward(
            input_ids, attention_mask=attention_mask, interventions=interventions, use_cache=True, logits_to_keep=1
        )
        return self.decode(
            out.logits[:, -1], out.past_key_values, attention_mask, max_new_tokens=max_new_tokens,
            interventions=interventions, drop_finished=drop_finished,
        )  # fmt: skip

    def can_drop_finished(self, interventions: Sequence[Intervention] = ()) -> bool:
        """Whether decoding with ``interventions`` may drop finished rows (:meth:`decode`): none of them acts on a
        decoding step and no :meth:`hooks` context is active."""
        return not decoding_interventions(interventions) and not self._context_hooks

    @torch.no_grad()
    def decode(
        self,
        last_logits: Tensor,
        past_key_values: Any,
        attention_mask: Tensor,
        *,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        interventions: Sequence[Intervention] = (),
        drop_finished: bool = False,
    ) -> Tensor:
        """Greedy continuation of a prompt forward already run: ``last_logits`` (B, V) at its last position, its
        KV cache (extended in place) and ``attention_mask`` (B, T0) over everything the cache holds. Returns the
        new tokens (B, n <= max_new_tokens); a row that emits a stop token is padded with ``pad_token_id`` after it.
        Interventions run on every decoding step, at ``query_positions = T0 + step``.

        ``drop_finished``: once a quarter of the rows still in the batch have stopped, remove them from the batch
        and the cache (``batch_select_indices``) so later steps compute only unfinished rows; the tokens are the
        same (rows are independent). Only when no intervention acts on decoding steps (interventions that are
        ``prompt_only`` are skipped there, exact no-ops beyond the prompt) and no hook context is active: those may
        depend on the batch's rows (:meth:`can_drop_finished`). The cache is then left holding the unfinished rows
        only."""
        interventions = decoding_interventions(interventions)
        if drop_finished and not self.can_drop_finished(interventions):
            raise ValueError("drop_finished needs a decode without step interventions or hook contexts")
        batch, prompt_len = attention_mask.shape
        device = attention_mask.device
        stops = torch.tensor(self.stop_token_ids, dtype=torch.long, device=device)
        tokens = torch.full((batch, max_new_tokens), self.pad_token_id, dtype=torch.long, device=device)
        rows = torch.arange(batch, device=device)  # the original row of each row still in the batch
        done = torch.zeros(batch, dtype=torch.bool, device=device)
        logits, n_new = last_logits, 0
        for step in range(max_new_tokens):
            nxt = torch.where(done, torch.full_like(done, self.pad_token_id, dtype=torch.long), logits.argmax(-1))
            tokens[rows, step], n_new = nxt, step + 1
            done |= torch.isin(nxt, stops)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            n_done = int(done.sum())
            if drop_finished and n_done > 0 and n_done >= DROP_FRACTION * len(done):
                keep = (~done).nonzero().squeeze(1)
                past_key_values.batch_select_indices(keep)
                rows, done, nxt, attention_mask = rows[keep], done[keep], nxt[keep], attention_mask[keep]
            attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
            out = self.forward(
                nxt[:, None],
                attention_mask=attention_mask,
                past_key_values=past_key_values,
                use_cache=True,
                query_offset=prompt_len + step,
                interventions=interventions,
            )
            past_key_values, logits = out.past_key_values, out.logits[:, -1]
        return tokens[:, :n_new]

    # -- copies and persistence -------------------------------------------------------------------------------------
    def reference_copy(self, backend: str | None = None) -> "HookedLM":
        """A frozen deep copy of the current weights (the reference of ga_klr, npo_klr, rmu and keyguard; patching
        from the original)."""
        from transformers import AutoModelForCausalLM

        config = copy.deepcopy(self.config)
        config._attn_implementation = "eager"
        hf = AutoModelForCausalLM.from_config(config, dtype=self.weights.W_E.dtype)
        hf.load_state_dict(self.state_dict())
        hf.tie_weights()
        hf.requires_grad_(False)
        hf.to(self.device)  # beside the model it copies (from_config builds on the CPU)
        return HookedLM(
            hf,
            self.tokenizer,
            source_dir=self.source_dir,
            backend=backend or self.backend.name,
            name=f"{self.name} (frozen reference)",
            lineage=copy.deepcopy(self.lineage),
            prompt_format=self.prompt_format,
        )

    def write_pretrained(self, directory: str | Path) -> None:
        """Write a loadable HF model directory (safetensors, config, tokenizer) into an existing directory."""
        from safetensors.torch import save_file

        directory = Path(directory)
        tensors: dict[str, Tensor] = {}
        seen: set[int] = set()
        for name, tensor in self._state.items():
            ptr = tensor.data_ptr()
            if ptr in seen:  # tied weights are stored once; the config re-ties them on load
                continue
            seen.add(ptr)
            tensors[name] = tensor.detach().cpu().contiguous()  # a no-op on the CPU
        save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
        self.config.save_pretrained(directory)
        self.hf.generation_config.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Atomically save to ``path`` (a new directory that :func:`load_model` reads back)."""
        from unpact_mech.io.atomic import atomic_output_dir
        from unpact_mech.io.results import write_json

        with atomic_output_dir(path, overwrite=overwrite) as tmp:
            self.write_pretrained(tmp)
            write_json(tmp / "unpact_model.json", {"name": self.name, "lineage": self.lineage})
        return Path(path)
