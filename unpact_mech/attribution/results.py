"""Result objects of the attribution methods: tensors for scripts, ``.to_frame()`` for tidy long tables.

Every frame has ``item_id, split, method, target, metric, value`` plus the columns that identify a row
(``unit, position, token, word_index`` for prompt units; ``layer, head, position`` for attention paths;
``layer, component`` for residual components; ``hook, layer, head, position`` for gradient x activation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from unpact_mech.attribution.units import Unit
from unpact_mech.models.hooks import GLOBAL_HOOKS, KEY_AXIS_KINDS

CONTRIBUTION = "contribution"


def _item_rows(base: dict[str, Any], metrics: dict[str, float]) -> list[dict[str, Any]]:
    return [base | {"metric": k, "value": float(v)} for k, v in metrics.items()]


@dataclass
class TokenAttribution:
    """Scores of the prompt's units (question tokens or words) for one item.

    ``scores`` (U,) aligned with ``units``; ``target_value`` = f(x); ``is_keyword`` marks units inside the item's
    annotated keywords; ``position_scores`` (T_prompt,) per-position scores where the method has them
    (gradient methods: every prompt position, template included); ``details`` holds per-item numbers such as
    the completeness delta of integrated gradients or ``f`` of the baseline.
    """

    item_id: str
    split: str
    method: str
    target: str
    level: str
    units: tuple[Unit, ...]
    scores: Tensor
    target_value: float
    is_keyword: tuple[bool, ...] = ()
    position_scores: Tensor | None = None
    details: dict[str, float] = field(default_factory=dict)

    @property
    def top_unit(self) -> int | None:
        """Index of the highest-scoring unit (first on ties), None without units."""
        return int(torch.argmax(self.scores)) if len(self.units) else None

    @property
    def top_word(self) -> int | None:
        """Word index (:attr:`Unit.word`) of the highest-scoring unit."""
        top = self.top_unit
        return None if top is None else self.units[top].word

    def to_frame(self, *, item_rows: bool = True, keytokens: Tensor | None = None) -> pd.DataFrame:
        """Long table: one ``contribution`` row per unit, then per-item rows (``target_value`` and details).

        ``keytokens`` (U,) bool, e.g. from :func:`~unpact_mech.attribution.keytokens.keytoken_mask`, adds an
        ``is_keytoken`` column to the unit rows.
        """
        base = {
            "item_id": self.item_id,
            "split": self.split,
            "method": self.method,
            "target": self.target,
            "level": self.level,
        }
        kw = self.is_keyword or (False,) * len(self.units)
        rows = [
            base
            | {
                "unit": u.index,
                "position": u.positions[0],
                "n_tokens": len(u.positions),
                "token": u.text,
                "word_index": u.word,
                "is_keyword": bool(k),
                "metric": CONTRIBUTION,
                "value": float(s),
            }
            for u, s, k in zip(self.units, self.scores.tolist(), kw)
        ]
        if keytokens is not None:
            for row, flag in zip(rows, keytokens.tolist()):
                row["is_keytoken"] = bool(flag)
        if item_rows:
            rows += _item_rows(base, {"target_value": self.target_value} | self.details)
        return pd.DataFrame(rows)


@dataclass
class ActivationAttribution:
    """Gradient x activation at hook points for one item.

    ``scores[hook]``: (T,) for (B, T, d) hooks, (T, H) for ``attn.hook_q`` / ``attn.hook_k`` / ``attn.hook_v`` /
    ``attn.hook_z`` (per head or KV head), (H, T_k) for ``attn.hook_attn_scores`` / ``attn.hook_pattern`` (summed
    over query positions). ``labels``: text of each position. In :meth:`to_frame` the two global hooks
    (``hook_embed``, ``ln_final.hook_normalized``) have ``layer`` -1; the ``hook`` column tells them apart.
    """

    item_id: str
    split: str
    target: str
    scores: dict[str, Tensor]
    labels: tuple[str, ...]
    target_value: float
    method: str = "grad_x_activation"

    def to_frame(self) -> pd.DataFrame:
        rows: list[dict[str, Any]] = []
        base = {"item_id": self.item_id, "split": self.split, "method": self.method, "target": self.target}
        for hook, score in self.scores.items():
            if hook in GLOBAL_HOOKS:
                layer, kind = -1, hook
            else:
                _, layer_txt, kind = hook.split(".", 2)
                layer = int(layer_txt)
            common = base | {"hook": hook, "layer": layer, "component": kind, "metric": self.method}
            if kind.endswith(KEY_AXIS_KINDS):  # (H, T_k): key positions
                for h, row in enumerate(score.tolist()):
                    rows += [
                        common | {"head": h, "position": p, "token": self.labels[p], "value": v}
                        for p, v in enumerate(row)
                    ]
            elif score.dim() == 2:  # (T, H)
                for p, row in enumerate(score.tolist()):
                    rows += [
                        common | {"head": h, "position": p, "token": self.labels[p], "value": v}
                        for h, v in enumerate(row)
                    ]
            else:
                rows += [
                    common | {"head": -1, "position": p, "token": self.labels[p], "value": v}
                    for p, v in enumerate(score.tolist())
                ]
        return pd.DataFrame(rows)


@dataclass
class AttentionPaths:
    """Direct contributions through attention, per layer, head and source (key) position, for one item.

    ``contributions`` (L_sel, H, T_k) for ``layers``; ``bias_terms`` (L_sel,) the output bias's direct term (0 for
    models without ``b_O``); ``layer_direct`` (L_sel,) the attention output's total direct contribution — by
    construction ``contributions[l].sum() + bias_terms[l] == layer_direct[l]`` (tested). ``readout_value`` is
    the readout (answer logits) of the forward; ``labels`` the text of each position.
    """

    item_id: str
    split: str
    target: str
    layers: tuple[int, ...]
    contributions: Tensor
    bias_terms: Tensor
    layer_direct: Tensor
    labels: tuple[str, ...]
    readout_value: float
    target_value: float
    method: str = "attention"

    def by_head(self) -> Tensor:
        """(L_sel, H): summed over source positions."""
        return self.contributions.sum(-1)

    def by_source(self) -> Tensor:
        """(T_k,): summed over the selected layers and all heads."""
        return self.contributions.sum((0, 1))

    def to_frame(self) -> pd.DataFrame:
        base = {"item_id": self.item_id, "split": self.split, "method": self.method, "target": self.target}
        rows: list[dict[str, Any]] = []
        for li, layer in enumerate(self.layers):
            for h, row in enumerate(self.contributions[li].tolist()):
                rows += [
                    base
                    | {
                        "layer": layer,
                        "head": h,
                        "position": p,
                        "token": self.labels[p],
                        "metric": "attention_path",
                        "value": v,
                    }
                    for p, v in enumerate(row)
                ]
            rows.append(base | {"layer": layer, "metric": "attn_bias", "value": float(self.bias_terms[li])})
            rows.append(base | {"layer": layer, "metric": "attn_direct", "value": float(self.layer_direct[li])})
        rows += _item_rows(base, {"readout_value": self.readout_value, "target_value": self.target_value})
        return pd.DataFrame(rows)


@dataclass
class ResidualContributions:
    """Direct logit attribution of the residual stream's components, and the logit lens, for one item.

    ``components``: names in residual order — ``embed``, ``pos_embed`` (models with learned positions),
    ``attn`` / ``mlp`` per layer (``layers[c]`` gives the layer, -1 for embeddings), and ``norm_bias``
    (LayerNorm models); ``values`` (C,) sum to ``readout_value`` (the answer logits under the frozen final norm).
    Logit lens per layer (after block L, the real final norm and unembedding): ``lens_logprob`` (L,) LP of the
    answer, ``lens_first_prob`` / ``lens_first_rank`` (L,) of its first token.
    """

    item_id: str
    split: str
    target: str
    components: tuple[str, ...]
    layers: tuple[int, ...]
    values: Tensor
    readout_value: float
    target_value: float
    lens_logprob: Tensor
    lens_first_prob: Tensor
    lens_first_rank: Tensor
    method: str = "residual"

    def by_layer(self) -> pd.DataFrame:
        """Wide (layer x component) table of the direct contributions of the blocks."""
        df = pd.DataFrame({"layer": self.layers, "component": self.components, "value": self.values.tolist()})
        return df[df.layer >= 0].pivot(index="layer", columns="component", values="value")

    def to_frame(self) -> pd.DataFrame:
        base = {"item_id": self.item_id, "split": self.split, "method": self.method, "target": self.target}
        rows = [
            base | {"layer": layer, "component": c, "metric": "direct_logit", "value": float(v)}
            for c, layer, v in zip(self.components, self.layers, self.values.tolist())
        ]
        for name, series in (
            ("lens_logprob", self.lens_logprob),
            ("lens_first_prob", self.lens_first_prob),
            ("lens_first_rank", self.lens_first_rank),
        ):
            rows += [
                base | {"layer": layer, "metric": name, "value": float(v)} for layer, v in enumerate(series.tolist())
            ]
        rows += _item_rows(base, {"readout_value": self.readout_value, "target_value": self.target_value})
        return pd.DataFrame(rows)
