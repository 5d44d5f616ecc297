"""Latent read-outs: is the forgotten answer still decodable from the residual stream? (``logit_lens``), and at which
depth does the unlearning act? (:func:`depth_curve`).

**Logit lens** (nostalgebraist 2020; after unlearning: Patil et al. arXiv 2309.17410, Lynch et al. arXiv
2402.16835). At the answer position ``p = len(prompt) - 1`` (the last prompt position, whose logits predict the
answer's first token ``y_1 = encoded.answer_ids[0]``), the residual stream after every block L is read through the
model's real final norm and unembedding::

    logits_L = norm(resid_post_L[p]) @ W_U            rank_L = #{v : logits_L[v] > logits_L[y_1]}   (0 = top-1)
    logprob_L = log_softmax(logits_L)[y_1]

At the last layer this IS the model's own first-token prediction (tested against :mod:`unpact_mech.scoring.logprob`),
so the condition reads the layers BEFORE it (option ``layers``; default every layer but the last): an item counts as
recovered (``correct`` = 1) when ``y_1`` is top-1 at ANY of them; ``rank`` / ``logprob`` are the best over them
(lowest rank, highest log-prob) and ``best_layer`` the layer of the best rank (ties: the higher log-prob, then the
earlier layer). NB ``logprob`` is the FIRST answer token's log-prob, while the baseline rows' ``logprob`` is the mean
over all answer tokens, so the runner's ``mean_logprob_gain`` of this condition compares the two. The per-layer
values of every layer (the last included) are recorded as the detail ``per_layer`` (``role, item_id, split, layer,
rank, logprob, top1``); :func:`lens_curve` summarises them per layer.

**Depth curve** (activation patching at every prompt position, one layer at a time). Layer ``L`` in
``0..n_layers``: the residual ENTERING block L (``blocks.L.hook_resid_pre``; ``L = n_layers``: the residual leaving
the last block, ``blocks.{n-1}.hook_resid_post``, the final norm's input) at every prompt position is copied from a
donor model run on the same tokens::

    restore@L: the unlearned model with the original's residual  -> blocks < L original, blocks >= L unlearned
    break@L:   the original with the unlearned model's residual  -> blocks < L unlearned, blocks >= L original

The answer positions of the teacher-forced row are not patched (the model computes its own answer tokens, attending
to the patched context). Per (direction, L): ``mean_logprob`` = mean over items of the teacher-forced LP (mean over
ALL answer tokens, as :func:`~unpact_mech.scoring.logprob.score_answers`), ``first_logprob`` = mean first-token
log-prob and ``top1_rate`` = share of items whose first answer token is top-1; plus the unpatched models as
directions ``original`` / ``unlearned`` (layer -1). Endpoints: restore@0 replaces the embeddings only (the unlearned
model exactly when unlearning left the embeddings alone); restore@n_layers gives the first answer token exactly the
original's final residual (the original's first-token prediction when the final norm and unembedding are shared).
:func:`unlearning_depth` = the first layer L from which on (L and every later layer) restoring gives back at least
half of the top-1 share the unlearning took (unlearned + 0.5 x (original - unlearned)): "the unlearning lives in
blocks < L". The ``logit_lens`` condition records this curve once per run (detail ``depth_curve``) on the items of
its first read-out of the unlearned model — in the recovery runner the eligible forget items — unless
``depth=false``; it costs two forwards per batch for the donors plus 2 x (n_layers + 1) patched teacher-forced
forwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd
import torch
from torch import Tensor

from unpact_mech.attacks.base import AttackEnv, ReadoutAttack
from unpact_mech.attacks.edits import copy_source, edit_at_positions
from unpact_mech.attribution.math import apply_final_norm
from unpact_mech.errors import InputError
from unpact_mech.models.hooks import hook_name
from unpact_mech.scoring.batching import EVAL_BATCH_SIZE, length_batches, right_pad_teacher_forced
from unpact_mech.scoring.logprob import masked_mean, token_logprobs, token_rank
from unpact_mech.scoring.tokens import EncodedQA, encode_item
from unpact_mech.utils import one_or_many

if TYPE_CHECKING:
    from unpact_mech.data.record import QAItem
    from unpact_mech.models.hooked import HookedLM
    from unpact_mech.scoring.batching import TeacherForcedBatch
    from unpact_mech.scoring.own_answer import OwnAnswer

#: Columns of the ``logit_lens`` read-out, of its ``per_layer`` detail, of :func:`lens_curve` and of
#: :func:`depth_curve`.
READOUT_COLUMNS = ("item_id", "split", "correct", "logprob", "rank", "best_layer")
PER_LAYER_COLUMNS = ("role", "item_id", "split", "layer", "rank", "logprob", "top1")
LENS_CURVE_COLUMNS = ("role", "layer", "top1_rate", "mean_logprob", "n")
DEPTH_COLUMNS = ("direction", "layer", "mean_logprob", "first_logprob", "top1_rate", "n")


# -- the logit lens ----------------------------------------------------------------------------------------------
def lens_scores(
    resid: Tensor, answer_ids: Tensor, *, norm: Callable[[Tensor], Tensor], W_U: Tensor
) -> tuple[Tensor, Tensor]:
    """Rank and log-prob of ``answer_ids`` under the logit lens of every layer.

    ``resid`` (n_layers, B, d_model) residuals at the answer position; ``answer_ids`` (B,); ``norm`` the final norm
    (d_model -> d_model, applied row-wise); ``W_U`` (d_model, d_vocab). With ``logits_L = norm(resid[L]) @ W_U``
    (B, V): ``rank[L, b] = #{v : logits_L[b, v] > logits_L[b, y_b]}`` and ``logprob[L, b] =
    log_softmax(logits_L[b])[y_b]``; both (n_layers, B). One layer's logits at a time (memory B x V).
    """
    W = W_U.float()
    ranks, logprobs = [], []
    for layer_resid in resid:
        logits = norm(layer_resid.float()) @ W
        ranks.append(token_rank(logits, answer_ids))
        logprobs.append(token_logprobs(logits, answer_ids))
    return torch.stack(ranks), torch.stack(logprobs)


def logit_lens(
    model: "HookedLM", encoded: Sequence[EncodedQA], *, batch_size: int = EVAL_BATCH_SIZE
) -> tuple[Tensor, Tensor]:
    """:func:`lens_scores` of every layer of ``model`` at each item's answer position (the last prompt position)
    for its first answer token -> (rank (n_layers, N) long, logprob (n_layers, N) float), on the CPU.

    Prompts are right-padded in batches of similar length (a row's prompt positions are its own, so the answer
    position of row b is ``len(prompt_b) - 1``); ``blocks.L.hook_resid_post`` is cached for every L and read
    through ``model.weights.final_norm`` (:func:`~unpact_mech.attribution.math.apply_final_norm`) and ``W_U``.
    """
    n_layers = model.shape.n_layers
    names = [hook_name(L, "hook_resid_post") for L in range(n_layers)]
    final = model.weights.final_norm
    rank = torch.zeros(n_layers, len(encoded), dtype=torch.long)
    logprob = torch.zeros(n_layers, len(encoded))
    prompts = [e.prompt.ids for e in encoded]
    for idx in length_batches([len(p) for p in prompts], batch_size):
        batch = right_pad_teacher_forced([prompts[i] for i in idx], [()] * len(idx), model.pad_token_id, idx)
        with torch.no_grad():
            cache = model.forward(batch.input_ids.to(model.device), cache=names, logits_to_keep=1).cache
            rows = torch.arange(len(idx), device=model.device)
            last = torch.tensor([len(prompts[i]) - 1 for i in idx], device=model.device)
            resid = torch.stack([cache[n][rows, last] for n in names])  # (n_layers, B, d_model)
            answers = torch.tensor([encoded[i].answer_ids[0] for i in idx], device=model.device)
            r, lp = lens_scores(resid, answers, norm=lambda x: apply_final_norm(x, final), W_U=model.weights.W_U)
        rank[:, idx], logprob[:, idx] = r.cpu(), lp.cpu()
    return rank, logprob


def best_over_layers(rank: Tensor, logprob: Tensor, layers: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
    """Over the rows ``layers`` of ``rank`` / ``logprob`` (n_layers, N): (best rank (N,), best log-prob (N,), the
    layer of the best rank (N,), ties broken by the higher log-prob, then the earlier layer)."""
    sel = torch.as_tensor(sorted(set(layers)), dtype=torch.long)
    r, lp = rank[sel], logprob[sel]
    best_rank = r.min(0).values
    among = torch.where(r == best_rank, lp, torch.full_like(lp, float("-inf")))
    return best_rank, lp.max(0).values, sel[among.argmax(0)]


def lens_curve(per_layer: pd.DataFrame, by: Sequence[str] = ("role",)) -> pd.DataFrame:
    """Per (``by`` columns, layer) of a ``per_layer`` detail: ``top1_rate`` (share of items whose first answer token
    is top-1 under that layer's lens), ``mean_logprob`` (its mean log-prob) and ``n`` items."""
    keys = [*by, "layer"]
    out = per_layer.groupby(keys, sort=True).agg(
        top1_rate=("top1", "mean"), mean_logprob=("logprob", "mean"), n=("item_id", "size")
    )
    return out.reset_index()[[*by, *LENS_CURVE_COLUMNS[1:]]]


# -- the depth curve ---------------------------------------------------------------------------------------------
def depth_hooks(n_layers: int) -> list[tuple[int, str]]:
    """(layer L, the hook kind it patches) for L in 0..n_layers: ``hook_resid_pre`` of block L, and for
    ``L = n_layers`` the ``hook_resid_post`` of the last block (as (n_layers - 1, kind))."""
    return [(L, "hook_resid_pre") for L in range(n_layers)] + [(n_layers - 1, "hook_resid_post")]


class _Replay:
    """A stand-in for the donor model of :func:`~unpact_mech.attacks.edits.edit_at_positions`: its ``forward``
    returns activations the donor recorded on the same batch beforehand (one donor forward per batch, not one per
    patched layer)."""

    def __init__(self, input_ids: Tensor, cache: dict[str, Tensor]) -> None:
        self.input_ids, self.cache = input_ids, cache

    def forward(self, input_ids: Tensor, *, attention_mask: Tensor | None = None, cache: Sequence[str] = ()) -> Any:
        if not torch.equal(input_ids, self.input_ids):
            raise ValueError("replayed donor activations belong to another batch")
        return SimpleNamespace(cache={name: self.cache[name] for name in cache})


def _answer_scores(logits: Tensor, batch: "TeacherForcedBatch") -> tuple[Tensor, Tensor, Tensor]:
    """Teacher-forced (LP (B,), first-token log-prob (B,), first-token rank (B,)) from kept logits, as
    :func:`~unpact_mech.scoring.logprob.score_answers` computes them."""
    tok_lp = token_logprobs(logits, batch.targets)
    rows = torch.arange(logits.shape[0], device=logits.device)
    first_tok = batch.targets[rows, batch.first]
    rank = token_rank(logits[rows, batch.first].float(), first_tok)
    return masked_mean(tok_lp, batch.answer_mask), tok_lp[rows, batch.first], rank


def depth_scores(
    original: "HookedLM",
    unlearned: "HookedLM",
    encoded: Sequence[EncodedQA],
    *,
    batch_size: int = EVAL_BATCH_SIZE,
) -> dict[tuple[str, int], tuple[Tensor, Tensor, Tensor]]:
    """Per-item scores of the depth curve (module docstring): ``{(direction, L): (LP (N,), first-token log-prob
    (N,), first-token rank (N,))}`` for ``restore`` / ``break`` and L in 0..n_layers, and ``("original", -1)`` /
    ``("unlearned", -1)`` unpatched. Patches go through :func:`~unpact_mech.attacks.edits.edit_at_positions` with
    :func:`~unpact_mech.attacks.edits.copy_source` at every prompt position."""
    n_layers = original.shape.n_layers
    sites = depth_hooks(n_layers)
    names = [hook_name(L, kind) for L, kind in sites]
    prompts = [e.prompt.ids for e in encoded]
    answers = [e.answer_ids for e in encoded]
    everywhere = [list(range(len(p))) for p in prompts]
    keys = [("original", -1), ("unlearned", -1)]
    keys += [(direction, L) for direction in ("restore", "break") for L in range(n_layers + 1)]
    n = len(encoded)
    out = {key: (torch.zeros(n), torch.zeros(n), torch.zeros(n, dtype=torch.long)) for key in keys}

    def keep(key: tuple[str, int], idx: list[int], logits: Tensor, batch: "TeacherForcedBatch") -> None:
        for target, value in zip(out[key], _answer_scores(logits, batch)):
            target[idx] = value.cpu().to(target.dtype)

    for idx in length_batches([len(p) + len(a) for p, a in zip(prompts, answers)], batch_size):
        tf = right_pad_teacher_forced([prompts[i] for i in idx], [answers[i] for i in idx], original.pad_token_id, idx)
        dev = original.device
        ids = tf.input_ids.to(dev)
        tf = replace(
            tf, input_ids=ids, targets=tf.targets.to(dev), answer_mask=tf.answer_mask.to(dev), first=tf.first.to(dev),
            layout=replace(tf.layout, input_ids=ids),
        )  # fmt: skip
        recorded = {}
        with torch.no_grad():
            for role, model in (("original", original), ("unlearned", unlearned)):
                fwd = model.forward(ids, cache=names, logits_to_keep=tf.keep)
                recorded[role] = _Replay(ids, fwd.cache)
                keep((role, -1), idx, fwd.logits, tf)
            for direction, receiver, donor in (("restore", unlearned, "original"), ("break", original, "unlearned")):
                for L, (layer, kind) in enumerate(sites):
                    factory = edit_at_positions(
                        kind, [layer], everywhere, copy_source, label=f"{direction}@{L}",
                        source=recorded[donor],  # type: ignore[arg-type]  # the donor's forward, replayed
                    )  # fmt: skip
                    logits = receiver.forward(ids, interventions=factory(tf.layout), logits_to_keep=tf.keep).logits
                    keep((direction, L), idx, logits, tf)
    return out


def depth_curve(
    original: "HookedLM",
    unlearned: "HookedLM",
    items: Sequence["QAItem | EncodedQA"],
    *,
    batch_size: int = EVAL_BATCH_SIZE,
) -> pd.DataFrame:
    """The depth curve (module docstring): one row per (direction, layer) with :data:`DEPTH_COLUMNS`; directions
    ``original`` / ``unlearned`` (layer -1: no patch), then ``restore`` and ``break`` for layers 0..n_layers.
    ``items``: QA items (encoded with the original's prompt format) or already encoded prompts."""
    encoded = [it if isinstance(it, EncodedQA) else encode_item(original, it) for it in items]
    if not encoded:
        return pd.DataFrame(columns=list(DEPTH_COLUMNS))
    scores = depth_scores(original, unlearned, encoded, batch_size=batch_size)
    rows = [
        {"direction": direction, "layer": L, "mean_logprob": float(lp.mean()), "first_logprob": float(first.mean()),
         "top1_rate": float((rank == 0).float().mean()), "n": len(encoded)}
        for (direction, L), (lp, first, rank) in scores.items()
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=list(DEPTH_COLUMNS))


def unlearning_depth(curve: pd.DataFrame, fraction: float = 0.5) -> int | None:
    """The first layer L from which on restoring gives back at least ``fraction`` of the top-1 share the unlearning
    took: ``restore top1_rate(L') >= u + fraction * (o - u)`` for L and every later layer of the curve, with o / u
    the unpatched original's / unlearned model's top-1 rates (the gap, not o alone: on eligible items the unlearned
    model often keeps part of the top-1 share while answering wrongly, which would make ``fraction * o`` trivial).
    None when the original is no better than the unlearned model, or the last layer does not restore that much."""
    rate = curve.set_index(["direction", "layer"])["top1_rate"]
    if ("original", -1) not in rate or ("unlearned", -1) not in rate:
        return None
    o, u = float(rate[("original", -1)]), float(rate[("unlearned", -1)])
    if not o > u:
        return None
    threshold = u + fraction * (o - u)
    restore = curve[curve["direction"] == "restore"].sort_values("layer")
    depth = None
    for layer, top1 in zip(restore["layer"], restore["top1_rate"]):
        if top1 >= threshold - 1e-12:
            depth = int(layer) if depth is None else depth
        else:
            depth = None
    return depth


# -- the condition -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LogitLens(ReadoutAttack):
    """``logit_lens``: the answer's first token read from the residual stream of each layer in ``layers`` (None:
    every layer but the last) through the final norm and unembedding (module docstring). ``depth``: also record the
    depth curve once per run (detail ``depth_curve``). ``context``: where the answer is read — ``own`` (default):
    inside the ORIGINAL model's own greedy answer sentence, at the position before the gold answer's first token
    there (:func:`own_context`; an instruct model writes "The capital of France is Paris", so right after the prompt
    even the original never predicts "Paris" first); ``bare``: right after the prompt. Items whose original answer
    does not contain the gold answer are read after the prompt."""

    name: str = "logit_lens"
    description: str = "the answer's first token top-1 under the logit lens of any layer before the last"
    family: str = "latent_readout"
    layers: tuple[int, ...] | None = None
    depth: bool = True
    context: str = "own"

    original_arm_shared: ClassVar[bool] = True
    options: ClassVar[tuple[str, ...]] = ("layers", "depth", "context")

    def __post_init__(self) -> None:  # layers=3 is the one layer 3 (frozen: set through object.__setattr__)
        object.__setattr__(self, "layers", one_or_many(self.layers))

    @property
    def label(self) -> str:
        from unpact_mech.syntax import layers_label

        parts = [] if self.layers is None else [layers_label(self.layers)]
        parts += ["bare"] if self.context == "bare" else []
        return f"{self.name}[{','.join(parts)}]" if parts else self.name

    def lens_layers(self, n_layers: int) -> tuple[int, ...]:
        """The layers read: ``layers``, or every layer but the last (the last is the model's own answer)."""
        return tuple(self.layers) if self.layers is not None else tuple(range(max(n_layers - 1, 1)))

    def resolve(self, model: "HookedLM") -> "LogitLens":
        n_layers = model.shape.n_layers
        if self.context not in ("own", "bare"):
            raise InputError(f"{self.kind_noun} {self.name}: context must be 'own' or 'bare', got {self.context!r}")
        if self.layers is not None and not self.layers:
            raise InputError(f"{self.kind_noun} {self.name}: layers must name at least one layer")
        bad = [L for L in self.lens_layers(n_layers) if not 0 <= L < n_layers]
        if bad:
            raise InputError(
                f"{self.kind_noun} {self.name}: layer {bad[0]} out of range (model has layers 0..{n_layers - 1})"
            )
        return self

    def own_answers(
        self, items: Sequence["QAItem"], encoded: Sequence[EncodedQA], env: AttackEnv
    ) -> list["OwnAnswer | None"]:
        """The ORIGINAL model's own answer of each item (:func:`~unpact_mech.scoring.own_answer.own_answers`), computed
        once per item and kept with the original's memo (the same context for both models and every run)."""
        from unpact_mech.scoring.own_answer import own_answers

        known = env.cached_for(env.original, ("own_answers",), dict)
        missing = [(it, e) for it, e in zip(items, encoded) if it.id not in known]
        if missing:
            found = own_answers(
                env.original, [m[0] for m in missing], [m[1] for m in missing], batch_size=env.batch_size
            )
            known.update({it.id: own for (it, _), own in zip(missing, found)})
        return [known[it.id] for it in items]

    def readout(self, model: "HookedLM", items: Sequence["QAItem"], env: AttackEnv) -> pd.DataFrame:
        if not items:
            return pd.DataFrame(columns=list(READOUT_COLUMNS))
        encoded = [env.encoded.get(it.id) or encode_item(model, it) for it in items]
        if self.context == "own":
            encoded = [own_context(e, own) for e, own in zip(encoded, self.own_answers(items, encoded, env))]
        rank, logprob = logit_lens(model, encoded, batch_size=env.batch_size)
        role = env.role(model)
        env.record(self.label, "per_layer", per_layer_frame(role, items, rank, logprob))
        best_rank, best_lp, best_layer = best_over_layers(rank, logprob, self.lens_layers(model.shape.n_layers))
        if self.depth and role == "unlearned":
            env.cached(
                ("logit_lens", "depth_curve", self.label),
                lambda: env.record(
                    self.label, "depth_curve", depth_curve(env.original, model, encoded, batch_size=env.batch_size)
                ),
            )
        return pd.DataFrame({
            "item_id": [it.id for it in items], "split": [it.split for it in items],
            "correct": (best_rank == 0).double().numpy(), "logprob": best_lp.double().numpy(),
            "rank": best_rank.numpy(), "best_layer": best_layer.numpy(),
        })  # fmt: skip


def own_context(encoded: EncodedQA, own: "OwnAnswer | None") -> EncodedQA:
    """``encoded`` with the original's own answer context appended to the prompt (ids ``prompt + context_ids``, text
    extended by nothing: only the ids are read) and the answer tokens as they stand in that sentence; unchanged when
    there is no own answer."""
    if own is None:
        return encoded
    end = len(encoded.prompt.text)
    prompt = replace(
        encoded.prompt, ids=tuple(encoded.prompt.ids) + tuple(own.context_ids),
        offsets=tuple(encoded.prompt.offsets) + ((end, end),) * len(own.context_ids),
    )  # fmt: skip
    return EncodedQA(encoded.item_id, prompt, tuple(own.answer_ids))


def per_layer_frame(role: str, items: Sequence["QAItem"], rank: Tensor, logprob: Tensor) -> pd.DataFrame:
    """The ``per_layer`` detail: one row per (layer, item) with :data:`PER_LAYER_COLUMNS`."""
    n_layers, n = rank.shape
    return pd.DataFrame({
        "role": role, "item_id": [it.id for it in items] * n_layers, "split": [it.split for it in items] * n_layers,
        "layer": torch.arange(n_layers).repeat_interleave(n).numpy(), "rank": rank.reshape(-1).numpy(),
        "logprob": logprob.reshape(-1).double().numpy(), "top1": (rank == 0).reshape(-1).double().numpy(),
    })  # fmt: skip


LATENT_ATTACKS: tuple[ReadoutAttack, ...] = (LogitLens(),)
