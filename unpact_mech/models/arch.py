"""Architecture facts: model shape, where modules live (for nnsight), and weight accessors (for the math).

Supported families (HF class, ``model_type``), each parity-tested on a tiny random config through both backends
(tests/unit/test_model_families.py: logits against plain HF, every hook, edits, greedy decoding, attribution sum rules,
gradients, one step of every unlearning method):

* Llama-style decoders (``LlamaForCausalLM``, ``llama``: SmolLM2, the built-in ``tiny`` model);
* Qwen2 (``Qwen2ForCausalLM``, ``qwen2``): Llama's modules plus q/k/v biases, which ``hook_q/k/v`` include;
* Mistral (``MistralForCausalLM``, ``mistral``): Llama's modules; the sliding window lives in the attention mask
  (keys outside it hold ``finfo.min`` in ``hook_attn_scores``). Paths that reuse a cached prefix or pack rows under
  a tree mask fall back where a window would be dropped (scoring/prompt_cache, attribution's occlusion and IG);
* Phi-3 (``Phi3ForCausalLM``, ``phi3``): fused ``qkv_proj`` ([q | k | v], GQA widths) and ``gate_up_proj``
  ([gate | up]: ``mlp.hook_pre`` is the gate half), optionally partial rotary;
* GPT-NeoX (``GPTNeoXForCausalLM``, ``gpt_neox``: Pythia): fused per-head ``query_key_value``, partial rotary,
  LayerNorm with biases; with ``use_parallel_residual`` (the default) attention and MLP both read resid_pre, so
  ``hook_resid_mid`` is missing;
* GPT-2 (``GPT2LMHeadModel``, ``gpt2``).

Any other config is a one-line :class:`~unpact_mech.errors.InputError` from :func:`architecture_for` naming its
architecture class and the supported ones. Gemma 2 (``Gemma2ForCausalLM``), which TransformerLens' bridge runs, is
refused with the reason: its post-attention / post-MLP norms and final logit soft-capping break the identities the
hooks and attribution state (``z @ W_O == attn_out``, ``hook_post @ W_out == mlp_out``, ``hook_normalized @ W_U ==
logits``). Adding a family means adding one :class:`Architecture` entry (module paths; nnsight ``.source`` op names
for the rotary call, pattern and scores, read off ``attn.source``) and adding it to the family tests.

Weight conventions returned by :class:`Weights` (TransformerLens style, ``x @ W``):
``W_U`` (d_model, d_vocab); ``W_O[L]`` (n_heads, d_head, d_model); ``b_O[L]`` (d_model,) or None;
``W_out[L]`` (d_mlp, d_model), ``b_out[L]`` (d_model,) or None (the MLP's output projection, reading
``mlp.hook_post``); final norm ``(kind, weight, bias, eps)`` with kind "rms" (x / sqrt(mean(x^2) + eps) * w) or
"layer" ((x - mean) / sqrt(var + eps) * w + b).

Hook kinds an architecture cannot have are listed in :attr:`Architecture.missing_hooks` (kind -> why); asking for one
raises a one-line :class:`~unpact_mech.errors.InputError` naming the hook and the family. Every supported family has
the whole vocabulary except parallel GPT-NeoX blocks (no ``hook_resid_mid``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from torch import Tensor

from unpact_mech.errors import InputError


@dataclass(frozen=True)
class ModelShape:
    """Sizes read from the HF config."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int


@dataclass(frozen=True)
class Architecture:
    """Per-family module paths (relative to the HF CausalLM module) and canonical parameter names."""

    family: str
    embed: str  # token embedding module
    layers: str  # ModuleList of blocks
    attn: str  # attention submodule of a block
    attn_out_proj: str  # output projection inside attn (its input is z)
    v_proj: str  # module inside attn whose output holds the value vectors
    # None: the whole output; c: the c-th part of a fused [q | k | v] projection, the parts H*d_head, H_kv*d_head and
    # H_kv*d_head wide (GPT-2's c_attn: thirds; Phi-3's qkv_proj), or per head [q_h | k_h | v_h] (qkv_per_head)
    v_chunk: int | None
    q_proj: str  # module inside attn whose output holds the (pre-rotary) query vectors
    k_proj: str  # ... and the key vectors
    q_chunk: int | None  # as v_chunk, for q and k
    k_chunk: int | None
    # nnsight ``.source`` op inside attn whose output is the rotated ``(q, k)``, each (B, H, T, d_head); None when the
    # family has no rotary embedding (q and k are then the projections' outputs).
    rotary_source: str | None
    mlp: str  # MLP submodule of a block
    mlp_in: str  # module inside mlp whose output is ``mlp.hook_pre`` (the gate projection of a gated MLP)
    mlp_out_proj: str  # module inside mlp whose input is ``mlp.hook_post`` (the output projection)
    gated_mlp: bool
    final_norm: str  # final norm module
    # nnsight ``.source`` path inside attn to the op whose output is the pattern: the call of the eager
    # attention function, then its dropout op (identity in eval) whose output feeds ``attn @ V``.
    pattern_source: tuple[str, ...]
    # ... and to the softmax op whose input is ``attn.hook_attn_scores`` (scaled scores plus the additive mask).
    scores_source: tuple[str, ...]
    o_weight: str  # canonical param name template of the attention output weight
    o_bias: str | None
    o_is_conv1d: bool  # GPT-2 Conv1D stores (in, out); nn.Linear stores (out, in)
    norm_kind: str
    norm_weight: str
    norm_bias: str | None
    unembed: str
    mlp_out_weight: str  # canonical param name template of the MLP output weight (o_is_conv1d layout applies)
    mlp_out_bias: str | None
    rotary: bool  # whether attention rotates q and k (RoPE)
    missing_hooks: tuple[tuple[str, str], ...] = ()  # (hook kind, why this family cannot have it)
    # The fused q/k/v projection's output is laid out per head, (..., H, 3 * d_head) = [q_h | k_h | v_h] (GPT-NeoX's
    # query_key_value), rather than [q | k | v].
    qkv_per_head: bool = False
    # None: ``mlp_in``'s whole output is ``mlp.hook_pre``; c: its c-th half (the gate of Phi-3's fused gate_up_proj,
    # [gate | up]).
    mlp_in_chunk: int | None = None


LLAMA = Architecture(
    family="llama",
    embed="model.embed_tokens",
    layers="model.layers",
    attn="self_attn",
    attn_out_proj="o_proj",
    v_proj="v_proj",
    v_chunk=None,
    q_proj="q_proj",
    k_proj="k_proj",
    q_chunk=None,
    k_chunk=None,
    rotary_source="apply_rotary_pos_emb_0",
    mlp="mlp",
    mlp_in="gate_proj",
    mlp_out_proj="down_proj",
    gated_mlp=True,
    final_norm="model.norm",
    pattern_source=("attention_interface_1", "nn_functional_dropout_0"),
    scores_source=("attention_interface_1", "nn_functional_softmax_0"),
    o_weight="model.layers.{L}.self_attn.o_proj.weight",
    o_bias=None,
    o_is_conv1d=False,
    norm_kind="rms",
    norm_weight="model.norm.weight",
    norm_bias=None,
    unembed="lm_head.weight",
    mlp_out_weight="model.layers.{L}.mlp.down_proj.weight",
    mlp_out_bias=None,
    rotary=True,
)

GPT2 = Architecture(
    family="gpt2",
    embed="transformer.wte",
    layers="transformer.h",
    attn="attn",
    attn_out_proj="c_proj",
    v_proj="c_attn",
    v_chunk=2,
    q_proj="c_attn",
    k_proj="c_attn",
    q_chunk=0,
    k_chunk=1,
    rotary_source=None,
    mlp="mlp",
    mlp_in="c_fc",
    mlp_out_proj="c_proj",
    gated_mlp=False,
    final_norm="transformer.ln_f",
    pattern_source=("attention_interface_1", "nn_functional_dropout_0"),
    scores_source=("attention_interface_1", "nn_functional_softmax_0"),
    o_weight="transformer.h.{L}.attn.c_proj.weight",
    o_bias="transformer.h.{L}.attn.c_proj.bias",
    o_is_conv1d=True,
    norm_kind="layer",
    norm_weight="transformer.ln_f.weight",
    norm_bias="transformer.ln_f.bias",
    unembed="lm_head.weight",
    mlp_out_weight="transformer.h.{L}.mlp.c_proj.weight",
    mlp_out_bias="transformer.h.{L}.mlp.c_proj.bias",
    rotary=False,
)

#: Qwen2 and Mistral are Llama's module tree and forward (Qwen2 adds q/k/v biases, which the hooks include; Mistral's
#: sliding window is in the attention mask, so masked keys hold ``finfo.min`` in ``hook_attn_scores``).
QWEN2 = replace(LLAMA, family="qwen2")
MISTRAL = replace(LLAMA, family="mistral")

PHI3 = replace(
    LLAMA,
    family="phi3",
    v_proj="qkv_proj",  # fused [q | k | v], widths H*d_head, H_kv*d_head, H_kv*d_head
    v_chunk=2,
    q_proj="qkv_proj",
    k_proj="qkv_proj",
    q_chunk=0,
    k_chunk=1,
    mlp_in="gate_up_proj",  # fused [gate | up]: mlp.hook_pre is the gate half
    mlp_in_chunk=0,
)

GPT_NEOX = Architecture(
    family="gpt_neox",
    embed="gpt_neox.embed_in",
    layers="gpt_neox.layers",
    attn="attention",
    attn_out_proj="dense",
    v_proj="query_key_value",  # fused, per head [q_h | k_h | v_h]
    v_chunk=2,
    q_proj="query_key_value",
    k_proj="query_key_value",
    q_chunk=0,
    k_chunk=1,
    qkv_per_head=True,
    rotary_source="apply_rotary_pos_emb_0",  # rotates the first rotary_pct of each head's dimensions
    mlp="mlp",
    mlp_in="dense_h_to_4h",
    mlp_out_proj="dense_4h_to_h",
    gated_mlp=False,
    final_norm="gpt_neox.final_layer_norm",
    pattern_source=("attention_interface_1", "nn_functional_dropout_0"),
    scores_source=("attention_interface_1", "nn_functional_softmax_0"),
    o_weight="gpt_neox.layers.{L}.attention.dense.weight",
    o_bias="gpt_neox.layers.{L}.attention.dense.bias",
    o_is_conv1d=False,
    norm_kind="layer",
    norm_weight="gpt_neox.final_layer_norm.weight",
    norm_bias="gpt_neox.final_layer_norm.bias",
    unembed="lm_head.weight",  # transformers 5 names GPT-NeoX's embed_out lm_head
    mlp_out_weight="gpt_neox.layers.{L}.mlp.dense_4h_to_h.weight",
    mlp_out_bias="gpt_neox.layers.{L}.mlp.dense_4h_to_h.bias",
    rotary=True,
)
#: GPT-NeoX's parallel block (``use_parallel_residual``, the default: Pythia) feeds attention and MLP the same
#: resid_pre, so there is no resid_mid (TransformerLens' HookedTransformer has none for parallel blocks either).
PARALLEL_NO_RESID_MID = (
    ("hook_resid_mid", "attention and MLP both read resid_pre in a parallel block (use_parallel_residual)"),
)

#: Families by HF ``model_type``, with the CausalLM class a config names in ``architectures``.
_BY_MODEL_TYPE = {
    "llama": (LLAMA, "LlamaForCausalLM"),
    "qwen2": (QWEN2, "Qwen2ForCausalLM"),
    "mistral": (MISTRAL, "MistralForCausalLM"),
    "phi3": (PHI3, "Phi3ForCausalLM"),
    "gpt_neox": (GPT_NEOX, "GPTNeoXForCausalLM"),
    "gpt2": (GPT2, "GPT2LMHeadModel"),
}
#: Families TransformerLens' bridge runs but whose numbers this package could not keep exact; why, in one clause.
_UNSUPPORTED = {
    "gemma2": (
        "its post-attention and post-MLP norms and final logit soft-capping break the identities the hooks and "
        "attribution rely on (z @ W_O == attn_out, hook_post @ W_out == mlp_out, hook_normalized @ W_U == logits)"
    ),
}
SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(cls for _, cls in _BY_MODEL_TYPE.values())


def architecture_for(config) -> Architecture:
    """Pick the :class:`Architecture` for an HF config, or raise a one-line :class:`InputError` naming the config's
    architecture class and the supported ones."""
    model_type = getattr(config, "model_type", None)
    if model_type not in _BY_MODEL_TYPE:
        named = list(getattr(config, "architectures", None) or [])
        what = f"{named[0]} (model type {model_type!r})" if named else f"model type {model_type!r}"
        why = f": {_UNSUPPORTED[model_type]}" if model_type in _UNSUPPORTED else ""
        raise InputError(f"architecture {what} is not supported{why}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    arch = _BY_MODEL_TYPE[model_type][0]
    if arch is GPT_NEOX and getattr(config, "use_parallel_residual", True):
        arch = replace(arch, missing_hooks=PARALLEL_NO_RESID_MID)
    return arch


def shape_from_config(config) -> ModelShape:
    """Read :class:`ModelShape` from the HF config of a supported family."""
    get = lambda *names: next(getattr(config, n) for n in names if getattr(config, n, None) is not None)
    d_model = get("hidden_size", "n_embd")
    n_heads = get("num_attention_heads", "n_head")
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    d_head = getattr(config, "head_dim", None) or d_model // n_heads
    d_mlp = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * d_model
    return ModelShape(
        n_layers=get("num_hidden_layers", "n_layer"),
        n_heads=n_heads,
        n_kv_heads=n_kv,
        d_model=d_model,
        d_head=d_head,
        d_mlp=d_mlp,
        d_vocab=config.vocab_size,
        n_ctx=get("max_position_embeddings", "n_positions"),
    )


@dataclass(frozen=True)
class FinalNorm:
    kind: str
    weight: Tensor
    bias: Tensor | None
    eps: float


class Weights:
    """Read-only views of the weights the attribution math needs, by canonical parameter name."""

    def __init__(self, params: Mapping[str, Tensor], arch: Architecture, shape: ModelShape, config) -> None:
        self._p, self._arch, self._shape, self._config = params, arch, shape, config

    def _get(self, name: str) -> Tensor:
        if name in self._p:
            return self._p[name]
        if name == self._arch.unembed and getattr(self._config, "tie_word_embeddings", False):
            return self._p[f"{self._arch.embed}.weight"]  # tied: lm_head shares the input embedding
        raise KeyError(name)

    @property
    def W_U(self) -> Tensor:
        """(d_model, d_vocab) unembedding."""
        return self._get(self._arch.unembed).T

    @property
    def W_E(self) -> Tensor:
        """(d_vocab, d_model) token embedding."""
        return self._get(f"{self._arch.embed}.weight")

    def W_O(self, layer: int) -> Tensor:
        """(n_heads, d_head, d_model): head h writes ``z[..., h, :] @ W_O[h]`` into the residual stream."""
        w = self._get(self._arch.o_weight.format(L=layer))
        w = w if self._arch.o_is_conv1d else w.T  # -> (n_heads * d_head, d_model)
        return w.reshape(self._shape.n_heads, self._shape.d_head, self._shape.d_model)

    def b_O(self, layer: int) -> Tensor | None:
        return self._get(self._arch.o_bias.format(L=layer)) if self._arch.o_bias else None

    def W_out(self, layer: int) -> Tensor:
        """(d_mlp, d_model): neuron n writes ``mlp.hook_post[..., n] * W_out[n]`` into the residual stream."""
        w = self._get(self._arch.mlp_out_weight.format(L=layer))
        return w if self._arch.o_is_conv1d else w.T

    def b_out(self, layer: int) -> Tensor | None:
        return self._get(self._arch.mlp_out_bias.format(L=layer)) if self._arch.mlp_out_bias else None

    @property
    def final_norm(self) -> FinalNorm:
        names = ("rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps")  # Llama-style, GPT-2, GPT-NeoX
        eps = next((getattr(self._config, n) for n in names if getattr(self._config, n, None) is not None), 1e-5)
        bias = self._get(self._arch.norm_bias) if self._arch.norm_bias else None
        return FinalNorm(self._arch.norm_kind, self._get(self._arch.norm_weight), bias, float(eps))


def walk(root, path: str):
    """Follow a dotted path through attributes and integer indices: ``walk(lm, "model.layers.3")``."""
    obj = root
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj
