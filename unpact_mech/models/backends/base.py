"""The narrow seam between :class:`~unpact_mech.models.hooked.HookedLM` and an interpretability library.

A backend wraps the SAME HF module the HookedLM owns (no copy) and does exactly one thing: run the HF forward
with a set of hook functions attached at hook names of the vocabulary (every kind of
:data:`~unpact_mech.models.hooks.NATIVE_BLOCK_KINDS` and ``ln_final.hook_normalized``; ``hook_embed`` and
``hook_resid_mid`` are handled in HookedLM). Each function maps the activation (in TransformerLens shape, see
:mod:`unpact_mech.models.hooks`) to the activation that continues the forward; the forward must continue from the
returned tensor even when it is the one passed in, so a cached activation is a node of the autograd graph.
Everything else — caching, interventions, resid_mid, generation, gradients — is built on that in HookedLM.

``run`` calls :attr:`Backend.module`, which is the HF module itself except inside :meth:`Backend.calling`: there it is
a wrapper whose forward calls the HF module (e.g. the ``DistributedDataParallel`` that ``accelerator.prepare``
returns), so the wrapper's own forward logic — DDP's gradient synchronisation — runs while the hooks still fire on
the HF submodules.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

from torch import Tensor

from unpact_mech.models.arch import Architecture, ModelShape

ActFn = Callable[[Tensor], Tensor]


class Backend(ABC):
    """Run the wrapped HF causal LM with activation functions at hook names."""

    name: ClassVar[str]

    def __init__(self, hf, tokenizer, source_dir: str, arch: Architecture, shape: ModelShape) -> None:
        self.hf, self.tokenizer, self.source_dir, self.arch, self.shape = hf, tokenizer, source_dir, arch, shape
        #: What :meth:`run` calls: ``hf``, or a wrapper around it inside :meth:`calling`.
        self.module: Callable[..., Any] = hf

    @contextlib.contextmanager
    def calling(self, module: Callable[..., Any]) -> Iterator[None]:
        """Within the context, :meth:`run` calls ``module`` (a wrapper whose forward calls ``hf``) instead of ``hf``."""
        previous, self.module = self.module, module
        try:
            yield
        finally:
            self.module = previous

    @abstractmethod
    def run(self, model_inputs: Mapping[str, Any], hooks: Mapping[str, ActFn]) -> Any:
        """Forward ``self.module(**model_inputs)`` (normally ``self.hf``) with ``hooks`` attached; return the HF output
        (``.logits``, ``.past_key_values``). ``hooks`` keys are hook names of the vocabulary (see the module
        docstring); functions run in execution order."""

    @property
    @abstractmethod
    def native(self) -> Any:
        """The library object over the same HF module, for users who want its own API: the TransformerBridge
        (``run_with_cache``, ``hooks``, its own hook names) or the nnsight ``TransformersModel`` (``.trace()``).
        See docs/hooks.md."""

    def z_to_heads(self, z: Tensor) -> Tensor:
        """(B, T, H*d_head) -> (B, T, H, d_head); no-op if already split."""
        return z if z.dim() == 4 else z.unflatten(-1, (self.shape.n_heads, self.shape.d_head))
