"""Memory needs of a decoder-only LM from its config alone: parameters, weights, gradients, AdamW state, the frozen
reference copy, the KV cache and training activations — pure functions of the shape, no model is built.

Shape (:class:`ModelDims`): ``L`` layers, width ``d``, ``H`` query heads and ``H_kv`` key/value heads of ``d_h``
dimensions, MLP width ``d_mlp``, vocabulary ``V``; gated (SwiGLU: gate, up, down) or plain (up, down) MLP; RMS norms
(a weight) or layer norms (a weight and a bias); which projections have biases; tied or untied unembedding; learned
absolute positions (GPT-2) or none (rotary). :func:`dims_from_config` reads it from a Hugging Face config (object or
``config.json`` dict) of the families Llama, Mistral, Qwen2, Phi-3, GPT-NeoX and GPT-2.

Bytes per element ``e``: float32 4, bfloat16 / float16 2 (:data:`BYTES_PER_ELEMENT`). Sizes are bytes (int); the
table is in GiB (2^30 bytes). Formulas (``P`` parameters, ``P_t`` trainable ones, ``B`` sequences of ``T`` tokens):

* weights ``P·e``; gradients ``P_t·e`` (gradients have the parameters' dtype);
* AdamW ``P_t·(4 + 4)`` — two float32 moments — plus a float32 master copy ``P_t·4`` when the weights are 16-bit
  (ASSUMPTION: bf16/fp16 training is mixed precision with float32 optimizer state, as in ZeRO / Megatron / DeepSpeed:
  2 + 2 + 12 = 16 bytes per trainable parameter. The toolkit's loop runs ``torch.optim.AdamW`` on the model's own
  parameters, which over bf16 parameters would keep bf16 moments and no master copy: 2·2 bytes instead of 12);
* the loop's snapshot of the trainable weights before training (``TrainResult.base``: the weight delta and the
  "did anything change" check) ``P_t·e``;
* the frozen reference copy ``P·e`` (:data:`REFERENCE_METHODS`: the KL retain term, RMU and keyguard keep one;
  NPO computes its reference log-probs once before training and keeps no copy);
* KV cache ``2·L·B·T·H_kv·d_h·e`` (keys and values of every layer);
* training activations: see :func:`layer_activation_bytes` and :func:`activation_bytes`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

#: Bytes per element of a dtype name.
BYTES_PER_ELEMENT: dict[str, int] = {
    "fp32": 4,
    "float32": 4,
    "bf16": 2,
    "bfloat16": 2,
    "fp16": 2,
    "float16": 2,
}
GIB = 2**30
#: Registered unlearning methods whose ``setup`` builds a frozen ``model.reference_copy()`` (with their default
#: hyperparameters: the KL retain term and RMU's retain anchor need α > 0). Checked against the registry in
#: tests/unit/test_memory.py.
REFERENCE_METHODS: tuple[str, ...] = (
    "ga_klr", "npo_klr", "rmu", "keyguard", "keyguard_late_answer", "keyguard_steer", "keyguard_smooth",
    "keyguard_quant", "keyguard2", "keyguard_grid",
)  # fmt: skip
#: MLP activations HF writes in Python (several saved temporaries) rather than as one kernel.
PYTHON_GELUS: tuple[str, ...] = ("gelu_new",)
#: Model types :func:`dims_from_config` reads.
FAMILIES: tuple[str, ...] = ("llama", "mistral", "qwen2", "phi3", "gpt_neox", "gpt2")


@dataclass(frozen=True)
class ModelDims:
    """The sizes the memory formulas need (see the module docstring for the symbols)."""

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    vocab: int
    tied_embeddings: bool
    gated_mlp: bool = True
    norm: str = "rms"  # "rms": a weight per norm; "layer": a weight and a bias
    qkv_bias: bool = False  # biases on the query, key and value projections (Qwen2, GPT-2, GPT-NeoX)
    o_bias: bool = False  # a bias on the attention output projection (GPT-2, GPT-NeoX)
    mlp_bias: bool = False  # biases on the MLP projections (GPT-2, GPT-NeoX)
    n_positions: int = 0  # learned absolute position embeddings (GPT-2's wpe); 0 = none (rotary)
    activation: str = "silu"  # the MLP's activation (HF ``hidden_act`` / ``activation_function``)
    softmax_fp32: bool = True  # eager attention's softmax runs in float32 (all families here but GPT-2)

    def __post_init__(self) -> None:
        if self.norm not in ("rms", "layer"):
            raise ValueError(f"norm must be 'rms' or 'layer', got {self.norm!r}")

    @property
    def mlp_saved(self) -> int:
        """How many d_mlp-wide tensors the MLP saves for the backward (:func:`mlp_activation_bytes`)."""
        if self.gated_mlp:
            return 4
        return 5 if self.activation in PYTHON_GELUS else 2


def _get(config: Any, *names: str, default: Any = None) -> Any:
    """The first of ``names`` set on ``config`` (an HF config object or a ``config.json`` dict)."""
    for name in names:
        value = config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)
        if value is not None:
            return value
    return default


def dims_from_config(config: Any) -> ModelDims:
    """:class:`ModelDims` of an HF config (a ``PretrainedConfig`` or a ``config.json`` dict) of a family in
    :data:`FAMILIES`. A dict must say ``tie_word_embeddings`` (the families' defaults differ), except GPT-2's
    (tied unless it says otherwise)."""
    model_type = _get(config, "model_type")
    if model_type not in FAMILIES:
        raise ValueError(f"model type {model_type!r}: memory formulas know {', '.join(FAMILIES)}")
    d = _get(config, "hidden_size", "n_embd")
    n_heads = _get(config, "num_attention_heads", "n_head")
    n_kv = _get(config, "num_key_value_heads", default=n_heads)
    d_head = _get(config, "head_dim", default=d // n_heads)
    common = dict(
        n_layers=_get(config, "num_hidden_layers", "n_layer"),
        d_model=d,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        d_head=d_head,
        vocab=_get(config, "vocab_size"),
    )
    if model_type == "gpt2":  # Conv1D layers with biases everywhere, layer norms, learned positions, tied lm_head
        return ModelDims(
            **common,
            d_mlp=_get(config, "n_inner", default=4 * d),
            tied_embeddings=bool(_get(config, "tie_word_embeddings", default=True)),
            gated_mlp=False,
            norm="layer",
            qkv_bias=True,
            o_bias=True,
            mlp_bias=True,
            n_positions=_get(config, "n_positions", "max_position_embeddings"),
            activation=_get(config, "activation_function", default="gelu_new"),
            softmax_fp32=False,
        )
    tied = _get(config, "tie_word_embeddings")
    if tied is None:
        raise ValueError(f"{model_type} config without tie_word_embeddings: say whether the unembedding is tied")
    if model_type == "gpt_neox":  # fused qkv with bias, dense with bias, plain MLP with biases, layer norms
        return ModelDims(
            **common,
            d_mlp=_get(config, "intermediate_size"),
            tied_embeddings=bool(tied),
            gated_mlp=False,
            norm="layer",
            qkv_bias=True,
            o_bias=True,
            mlp_bias=True,
            activation=_get(config, "hidden_act", default="gelu"),
        )
    attention_bias = bool(_get(config, "attention_bias", default=False))
    return ModelDims(
        **common,
        d_mlp=_get(config, "intermediate_size"),
        tied_embeddings=bool(tied),
        gated_mlp=True,
        norm="rms",
        qkv_bias=attention_bias or model_type == "qwen2",  # Qwen2: q/k/v biases, none on o_proj
        o_bias=attention_bias,
        mlp_bias=bool(_get(config, "mlp_bias", default=False)),
        activation=_get(config, "hidden_act", default="silu"),
    )


def parameter_counts(dims: ModelDims) -> dict[str, int]:
    """Parameters by part. With ``q = H·d_h`` and ``kv = H_kv·d_h``:

    * ``embedding`` = V·d (+ n_positions·d learned positions);
    * ``attention`` = L·(d·q + 2·d·kv + q·d + [q + 2·kv if qkv_bias] + [d if o_bias]);
    * ``mlp`` = L·(3·d·d_mlp + [2·d_mlp + d if mlp_bias]) gated, L·(2·d·d_mlp + [d_mlp + d if mlp_bias]) plain;
    * ``norms`` = (2·L + 1)·n_norm with n_norm = d (RMS: weight) or 2·d (layer norm: weight and bias);
    * ``unembedding`` = 0 tied, V·d untied.
    """
    d, L = dims.d_model, dims.n_layers
    q, kv = dims.n_heads * dims.d_head, dims.n_kv_heads * dims.d_head
    attn = d * q + 2 * d * kv + q * d + (q + 2 * kv if dims.qkv_bias else 0) + (d if dims.o_bias else 0)
    if dims.gated_mlp:
        mlp = 3 * d * dims.d_mlp + (2 * dims.d_mlp + d if dims.mlp_bias else 0)
    else:
        mlp = 2 * d * dims.d_mlp + (dims.d_mlp + d if dims.mlp_bias else 0)
    per_norm = d if dims.norm == "rms" else 2 * d
    return {
        "embedding": dims.vocab * d + dims.n_positions * d,
        "attention": L * attn,
        "mlp": L * mlp,
        "norms": (2 * L + 1) * per_norm,
        "unembedding": 0 if dims.tied_embeddings else dims.vocab * d,
    }


def count_parameters(dims: ModelDims) -> int:
    """Total parameters, each tied tensor once (= ``sum(p.numel() for p in model.parameters())`` of the HF model):
    the sum of :func:`parameter_counts`."""
    return sum(parameter_counts(dims).values())


def bytes_per_element(dtype: str) -> int:
    """``e`` of a dtype name in :data:`BYTES_PER_ELEMENT`."""
    try:
        return BYTES_PER_ELEMENT[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}: choose one of {', '.join(BYTES_PER_ELEMENT)}") from None


def weight_bytes(n_params: int, dtype: str) -> int:
    """Weights: ``P·e``."""
    return n_params * bytes_per_element(dtype)


def gradient_bytes(n_trainable: int, dtype: str) -> int:
    """Gradients, in the parameters' dtype: ``P_t·e``."""
    return n_trainable * bytes_per_element(dtype)


def adamw_state_bytes(n_trainable: int, dtype: str, *, master_copy: bool = True) -> int:
    """AdamW: two float32 moments ``8·P_t``, plus a float32 master copy ``4·P_t`` when the weights are 16-bit and
    ``master_copy`` (mixed precision with float32 optimizer state: the module docstring's assumption)."""
    master = 4 * n_trainable if master_copy and bytes_per_element(dtype) < 4 else 0
    return 8 * n_trainable + master


def reference_bytes(n_params: int, dtype: str) -> int:
    """The frozen reference copy (:data:`REFERENCE_METHODS`): the whole model's weights again, ``P·e``."""
    return weight_bytes(n_params, dtype)


def snapshot_bytes(n_trainable: int, dtype: str) -> int:
    """The loop's copy of the trainable weights before training (``TrainResult.base``): ``P_t·e``."""
    return n_trainable * bytes_per_element(dtype)


def kv_cache_bytes(dims: ModelDims, batch: int, seq: int, dtype: str) -> int:
    """Keys and values of every layer for ``batch`` sequences of ``seq`` tokens: ``2·L·B·T·H_kv·d_h·e``."""
    return 2 * dims.n_layers * batch * seq * dims.n_kv_heads * dims.d_head * bytes_per_element(dtype)


def norm_activation_bytes(dims: ModelDims, dtype: str) -> int:
    """Bytes one norm saves per token: RMS (HF's Python ``RMSNorm``, which computes in float32) ``4·d`` (its input
    in float32: the input itself at fp32, a copy at 16 bits) ``+ e·d`` (the normalised input, read by the weight
    multiply) ``+ e·d`` (its output: the input of the projections after it) ``+ 4`` (1/rms); layer norm (torch's
    kernel) ``2·e·d + 8`` (input, output, mean and 1/std in float32)."""
    e, d = bytes_per_element(dtype), dims.d_model
    return 4 * d + 2 * e * d + 4 if dims.norm == "rms" else 2 * e * d + 8


def attention_activation_bytes(dims: ModelDims, seq: int, dtype: str, *, eager_attention: bool = True) -> int:
    """Bytes the attention saves per token (its input, the norm's output, is counted with the norm). Eager
    attention (HF's ``eager_attention_forward``, what the toolkit runs): ``e·H·d_h`` (q after the rotary embedding)
    ``+ 2·e·H·d_h`` (k and v, repeated to the H query heads by ``repeat_kv``: grouped-query attention saves no
    activation memory here) ``+ s·H·T`` (the softmax output, s = 4 where the family's softmax runs in float32 — all
    but GPT-2 — else e) ``+ e·H·T`` when s ≠ e (its cast to the activation dtype, read by p·v) ``+ e·H·d_h`` (z, the
    output projection's input). SDPA / flash attention (``eager_attention=False``, an approximation: not measured,
    the kernel's log-sum-exp ignored): ``e·(H + 2·H_kv)·d_h + e·H·d_h``."""
    e, H, d_h = bytes_per_element(dtype), dims.n_heads, dims.d_head
    if not eager_attention:
        return e * (H + 2 * dims.n_kv_heads) * d_h + e * H * d_h
    s = 4 if dims.softmax_fp32 else e
    probs = s * H * seq + (e * H * seq if s != e else 0)
    return e * H * d_h + 2 * e * H * d_h + probs + e * H * d_h


def mlp_activation_bytes(dims: ModelDims, dtype: str) -> int:
    """Bytes the MLP saves per token (its input is counted with the norm): ``n·e·d_mlp`` with n =
    :attr:`ModelDims.mlp_saved` (gated SiLU 4: gate output, SiLU(gate), up output, their product = the down
    projection's input; a GELU kernel 2: its input and output; GPT-2's ``gelu_new``, tanh-GELU written in Python, 5)."""
    return dims.mlp_saved * bytes_per_element(dtype) * dims.d_mlp


def layer_activation_bytes(dims: ModelDims, seq: int, dtype: str, *, eager_attention: bool = True) -> int:
    """Bytes one decoder layer saves for the backward, per token: two norms
    (:func:`norm_activation_bytes`) + :func:`attention_activation_bytes` + :func:`mlp_activation_bytes`.

    The accounting of Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models",
    §4.1: ``34·s·b·h + 5·a·s²·b`` bytes per layer, 16-bit, GPT-style, one dropout mask byte per element), adapted to
    what the pinned transformers runs: no dropout (the loop runs in eval mode: no masks, no dropout outputs), RMS
    norms and a float32 softmax, grouped-query heads repeated before the eager product, gated MLPs. For GPT-2 at
    16 bits with a GELU kernel it gives the paper's terms less the dropout ones: ``32·s·b·h + 2·a·s²·b``. Pinned to
    the saved tensors of tiny Llama and GPT-2 models in fp32 and bf16 in tests/unit/test_memory.py. Left out: the
    token ids and rotary tables (a few bytes per token), the additive attention mask (B·T·T once, not per layer),
    the backward's own transient buffers (about one layer's activations and gradients), allocator fragmentation and
    the framework's context.
    """
    norms = 2 * norm_activation_bytes(dims, dtype)
    return (
        norms
        + attention_activation_bytes(dims, seq, dtype, eager_attention=eager_attention)
        + mlp_activation_bytes(dims, dtype)
    )


def head_activation_bytes(dims: ModelDims, dtype: str) -> int:
    """Bytes the model's head saves per token whose logits are kept: the final norm
    (:func:`norm_activation_bytes`) ``+ 4·V`` (the float32 log-softmax of the logits, which the loss reads:
    :func:`~unpact_mech.scoring.logprob.token_logprobs` upcasts)."""
    return norm_activation_bytes(dims, dtype) + 4 * dims.vocab


def activation_bytes(
    dims: ModelDims,
    batch: int,
    seq: int,
    dtype: str,
    *,
    checkpointing: bool = False,
    eager_attention: bool = True,
    logit_tokens: int | None = None,
) -> int:
    """Activations saved for one forward/backward of ``batch`` sequences of ``seq`` tokens, with ``a`` =
    :func:`layer_activation_bytes` and ``h`` = :func:`head_activation_bytes`:

    * without checkpointing: ``B·T·L·a + B·K·h``;
    * with gradient checkpointing of every decoder layer (HF's, ``--gradient-checkpointing``): each layer keeps
      only its input, ``B·T·L·e·d``, and the backward recomputes one layer at a time, ``+ B·T·a``; the head is not
      checkpointed, ``+ B·K·h`` (Korthikanti et al.'s "full recomputation", ``2·s·b·h·L`` at 16 bits, plus the
      one layer being recomputed and the head).

    ``K`` = ``logit_tokens`` per sequence (default: all ``T``; the unlearning loop keeps only the answer span, so
    the default is an upper bound for it).
    """
    tokens = batch * seq
    kept = batch * (seq if logit_tokens is None else logit_tokens)
    layer = layer_activation_bytes(dims, seq, dtype, eager_attention=eager_attention)
    if checkpointing:
        layers = dims.n_layers * bytes_per_element(dtype) * dims.d_model + layer
    else:
        layers = dims.n_layers * layer
    return tokens * layers + kept * head_activation_bytes(dims, dtype)


def memory_needs(
    dims: ModelDims,
    dtype: str,
    batch: int,
    seq: int,
    *,
    n_trainable: int | None = None,
    reference: bool = True,
    eager_attention: bool = True,
    logit_tokens: int | None = None,
) -> dict[str, int]:
    """Every term in bytes, and the three commands' totals:

    * ``evaluate`` = weights + KV cache (greedy decoding of ``batch`` sequences of ``seq`` tokens);
    * ``attribute`` = weights + activations of one forward/backward (gradients reach the inputs, not the weights);
    * ``unlearn`` = weights + gradients + AdamW + snapshot + reference (when ``reference``) + activations;
      ``unlearn_ckpt`` the same with gradient checkpointing.

    ``n_trainable`` defaults to every parameter (all methods but RMU/keyguard train the whole model)."""
    n_params = count_parameters(dims)
    n_train = n_params if n_trainable is None else n_trainable
    act = dict(batch=batch, seq=seq, dtype=dtype, eager_attention=eager_attention, logit_tokens=logit_tokens)
    out = {
        "params": n_params,
        "weights": weight_bytes(n_params, dtype),
        "grads": gradient_bytes(n_train, dtype),
        "adamw": adamw_state_bytes(n_train, dtype),
        "snapshot": snapshot_bytes(n_train, dtype),
        "reference": reference_bytes(n_params, dtype) if reference else 0,
        "kv_cache": kv_cache_bytes(dims, batch, seq, dtype),
        "activations": activation_bytes(dims, **act),
        "activations_ckpt": activation_bytes(dims, checkpointing=True, **act),
    }
    training = out["weights"] + out["grads"] + out["adamw"] + out["snapshot"] + out["reference"]
    out["evaluate"] = out["weights"] + out["kv_cache"]
    out["attribute"] = out["weights"] + out["activations"]
    out["unlearn"] = training + out["activations"]
    out["unlearn_ckpt"] = training + out["activations_ckpt"]
    return out


#: The byte columns of :func:`memory_table`, in order.
TABLE_COLUMNS: tuple[str, ...] = (
    "weights",
    "grads",
    "adamw",
    "snapshot",
    "reference",
    "kv_cache",
    "activations",
    "activations_ckpt",
    "evaluate",
    "attribute",
    "unlearn",
    "unlearn_ckpt",
)


def memory_table(
    configs: Mapping[str, Any],
    dtypes: Iterable[str] = ("fp32", "bf16"),
    batch: int = 8,
    seq: int = 512,
    **options: Any,
) -> pd.DataFrame:
    """One row per (model, dtype): ``model``, ``dtype``, ``params_billion`` and :data:`TABLE_COLUMNS` in GiB.

    ``configs``: name -> :class:`ModelDims`, HF config or ``config.json`` dict (e.g. :data:`PUBLIC_CONFIGS`);
    ``options``: :func:`memory_needs` keywords (``n_trainable``, ``reference``, ``eager_attention``,
    ``logit_tokens``)."""
    rows = []
    dtypes = list(dtypes)
    for name, config in configs.items():
        dims = config if isinstance(config, ModelDims) else dims_from_config(config)
        for dtype in dtypes:
            needs = memory_needs(dims, dtype, batch, seq, **options)
            row = {"model": name, "dtype": dtype, "params_billion": needs["params"] / 1e9}
            row.update({col: needs[col] / GIB for col in TABLE_COLUMNS})
            rows.append(row)
    return pd.DataFrame(rows, columns=["model", "dtype", "params_billion", *TABLE_COLUMNS])


def format_table(table: pd.DataFrame, fmt: str = "markdown") -> str:
    """The table as GitHub markdown or CSV text, numbers with two decimals (GiB; billions of parameters)."""
    cells = [[f"{v:.2f}" if isinstance(v, float) else str(v) for v in row] for row in table.itertuples(index=False)]
    header = list(table.columns)
    if fmt == "csv":
        return "\n".join(",".join(r) for r in [header, *cells]) + "\n"
    if fmt != "markdown":
        raise ValueError(f"format must be 'markdown' or 'csv', got {fmt!r}")
    from unpact_mech.utils import markdown_table

    numeric = [isinstance(v, float) for v in table.iloc[0]] if len(table) else [False] * len(header)
    return markdown_table(header, cells, numeric)


def _llama(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int, vocab: int, tied: bool) -> dict:
    return {
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "intermediate_size": intermediate,
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
        "attention_bias": False,
        "mlp_bias": False,
    }


#: Published ``config.json`` values (the fields the formulas read) of four public Llama checkpoints, for the table
#: in docs/bigger_models.md. No download: written here once from the model cards' configs.
PUBLIC_CONFIGS: dict[str, dict] = {
    "Llama-3.2-1B": _llama(2048, 16, 32, 8, 8192, 128256, tied=True),
    "Llama-3.2-3B": _llama(3072, 28, 24, 8, 8192, 128256, tied=True),
    "Llama-2-7B": _llama(4096, 32, 32, 32, 11008, 32000, tied=False),
    "Llama-3.1-8B": _llama(4096, 32, 32, 8, 14336, 128256, tied=False),
}
