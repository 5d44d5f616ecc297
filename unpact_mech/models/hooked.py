"""``HookedLM``: the one model object shared by unlearning, attribution and recovery.

It owns the HF causal LM (``.hf``): unlearning updates exactly these parameters. The backend
(TransformerLens bridge or nnsight) wraps the same module, so a weight update is visible to attribution and
recovery with no reload and no copy. The only copy is the explicit, frozen :meth:`HookedLM.reference_copy`
(for KL/NPO/RMU references and patching from the original).

One small interface:

* :meth:`forward` — logits for a batch, with ``interventions`` (functions at hook names) and ``cache`` (hook
  names to record); works under ``torch.enable_grad()`` so cached activations can be differentiated;
* :meth:`run_with_cache` — shorthand returning ``(logits, cache)``;
* :meth:`embed` — token embeddings, to differentiate with respect to (pass them back as ``inputs_embeds``);
* :meth:`generate` — greedy decoding with a KV cache, interventions active on every step;
* :meth:`reference_copy`, :meth:`save` / :func:`~unpact_mech.models.loading.load_model`;
* :meth:`forward_through` — run forwards through a distributed wrapper of ``.hf`` (``accelerator.prepare``).
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
    Intervention,
    compose,
    hook_name,
    parse_hook,
)


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

    # -- forward ---------------------------------------------------------------------------------------------------
    def embed(self, input_ids: Tensor) -> Tensor:
        """Token embeddings (B, T, d_model) of ``input_ids`` (``W_E[input_ids]``)."""
        return torch.nn.functional.embedding(input_ids, self.weights.W_E)

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
            site = parse_hook(iv.hook, self.shape.n_layers)
            ctx = HookContext(site.name, site.layer, query_positions)
            target(site).append(lambda act, f=iv.fn, c=ctx: f(act, c))
        for name in cache:
            site = parse_hook(name, self.shape.n_layers)
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
        after interventions at the same hook.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        n_query = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        query_positions = torch.arange(query_offset, query_offset + n_query, device=self.device)
        store: dict[str, Tensor] = {}
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

    __call__ = forward

    def run_with_cache(self, input_ids: Tensor, names: Sequence[str], **kwargs) -> tuple[Tensor, dict[str, Tensor]]:
        """``(logits, cache)`` with activations recorded at ``names`` (only those: full caches are huge)."""
        out = self.forward(input_ids, cache=names, **kwargs)
        return out.logits, out.cache

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        max_new_tokens: int = 12,
        interventions: Sequence[Intervention] = (),
    ) -> Tensor:
        """Greedy decoding with a KV cache; returns the new tokens (B, n <= max_new_tokens).

        ``input_ids`` is a left-padded prompt batch (positions in the interventions' coordinates). Interventions
        run on the prompt forward and on every decoding step (with ``query_positions = T0 + step``). A row that
        emits a stop token is padded with ``pad_token_id`` afterwards.
        """
        batch, prompt_len = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        stops = torch.tensor(self.stop_token_ids, dtype=torch.long, device=input_ids.device)
        done = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
        new_tokens: list[Tensor] = []
        out = self.forward(
            input_ids, attention_mask=attention_mask, interventions=interventions, use_cache=True, logits_to_keep=1
        )
        for step in range(max_new_tokens):
            nxt = out.logits[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, self.pad_token_id), nxt)
            new_tokens.append(nxt)
            done |= torch.isin(nxt, stops)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
            out = self.forward(
                nxt[:, None],
                attention_mask=attention_mask,
                past_key_values=out.past_key_values,
                use_cache=True,
                query_offset=prompt_len + step,
                interventions=interventions,
            )
        return torch.stack(new_tokens, dim=1)

    # -- copies and persistence -------------------------------------------------------------------------------------
    def reference_copy(self, backend: str | None = None) -> "HookedLM":
        """A frozen deep copy of the current weights (for KL/NPO/RMU references, patching from the original)."""
        from transformers import AutoModelForCausalLM

        config = copy.deepcopy(self.config)
        config._attn_implementation = "eager"
        hf = AutoModelForCausalLM.from_config(config, dtype=self.weights.W_E.dtype)
        hf.load_state_dict(self.state_dict())
        hf.tie_weights()
        hf.requires_grad_(False)
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
            tensors[name] = tensor.detach().contiguous()
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
