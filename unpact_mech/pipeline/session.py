"""The stages every study shares, on one :class:`Session`: the original model, its items, and the run directory.

===========================  =================================================================  ======================
stage                        what it does                                                       writes (in ``out``)
===========================  =================================================================  ======================
:meth:`Session.evaluate`      greedy answers + judge + LP/rank of items (``evaluate_items``)      —
:meth:`Session.write_evaluation` the original's evaluation as ``unpact evaluate`` writes it      ``evaluate/``
:meth:`Session.attribute`     word-level occlusion (the paper's score) or another method         —
:meth:`Session.keywords`      KeyTokens of the ORIGINAL model's word occlusion, as keywords      —
:meth:`Session.original_keywords` the two above in one call (attribute the original, KeyTokens)  —
:meth:`Session.unlearn_fresh_copy` a fresh copy of the model unlearned (seeded)             ``unlearned/<method>/``
:meth:`Session.attribute_pair` the same attribution on an unlearned model, compared     ``attribution/<label>/<name>/``
:meth:`Session.recover`       the recovery experiment (conditions with controls)                 ``recovery/<label>/``
:meth:`Session.record`        the run record (``run.json``) of a stage or of the whole run        —
===========================  =================================================================  ======================

Every stage writes the same files as the matching command, so ``unpact report`` renders them all. ``unpact demo``
(:mod:`unpact_mech.demo`) and the experiment scripts (:mod:`unpact_mech.pipeline.study`) are sequences of these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from unpact_mech.pipeline.presets import MAX_CONTROL_ITEMS, OCCLUSION_BATCH
from unpact_mech.scoring.batching import EVAL_BATCH_SIZE
from unpact_mech.scoring.generation import DEFAULT_MAX_NEW_TOKENS

if TYPE_CHECKING:
    from unpact_mech.attacks import ItemKeywords
    from unpact_mech.attribution.run import AttributionRun
    from unpact_mech.data.record import QAItem
    from unpact_mech.io import RunWriter
    from unpact_mech.models.hooked import HookedLM
    from unpact_mech.recovery.run import RecoveryConfig, RecoveryResult
    from unpact_mech.unlearning.batches import UnlearningSet
    from unpact_mech.unlearning.run import UnlearnResult


@dataclass
class Session:
    """One study of ``spec`` on ``items`` (``data`` names them), writing into the directory ``out``.

    ``command`` names the study in run records (``demo``, ``experiment:<script>``); a stage's record is
    ``<stage>`` for the demo and ``<command>/<stage>`` otherwise. ``lineages`` collects the lineage of every
    unlearned model the session made or loaded (method -> lineage).
    """

    spec: str
    data: str
    items: list["QAItem"]
    original: "HookedLM"
    out: Path
    seed: int = 0
    backend: str = "transformer_lens"
    device: str = "auto"
    dtype: str = "float32"
    progress: bool = True
    command: str = "demo"
    argv: Sequence[str] = ("unpact", "demo")
    batch_size: int = EVAL_BATCH_SIZE
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    occlusion_batch: int = OCCLUSION_BATCH
    target: str = "auto"  # what attribution attributes (auto: the answer in context for chat-format prompts)
    lineages: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: What recovery conditions computed for the ORIGINAL model (a quantized or relearned copy of it), reused by
    #: every recovery run of this session (:meth:`AttackEnv.cached_for`).
    original_memo: dict[Any, Any] = field(default_factory=dict, repr=False)

    # -- run records ---------------------------------------------------------------------------------------------
    def stage_command(self, stage: str) -> str:
        return stage if self.command == "demo" else f"{self.command}/{stage}"

    def record(self, command: str, config: dict[str, Any], lineage: Sequence[dict[str, Any]]) -> "RunWriter":
        """The run record of ``command`` with this session's seed, argv and data input."""
        from unpact_mech.io import run_record

        return run_record(command, config=config, seed=self.seed, data=self.data, lineage=lineage, argv=self.argv)

    def stage_record(self, stage: str, config: dict[str, Any], lineage: Sequence[dict[str, Any]]) -> "RunWriter":
        return self.record(self.stage_command(stage), config | {"stage": self.command}, lineage)

    # -- evaluation ----------------------------------------------------------------------------------------------
    def evaluate(self, model: "HookedLM", items: Sequence["QAItem"] | None = None) -> pd.DataFrame:
        """Greedy answers + judge + LP/rank (``evaluate_items``), one row per item (default: every item)."""
        from unpact_mech.scoring.evaluate import evaluate_items

        return evaluate_items(
            model,
            self.items if items is None else items,
            batch_size=self.batch_size,
            max_new_tokens=self.max_new_tokens,
            progress=self.progress,
        )

    @cached_property
    def original_evaluation(self) -> pd.DataFrame:
        """The original model's evaluation of every item (computed once)."""
        return self.evaluate(self.original)

    def write_evaluation(self) -> dict[str, Any]:
        """``evaluate/``: the original's evaluation as ``unpact evaluate`` writes it; returns its summary."""
        from unpact_mech.scoring.evaluate import summarize_evaluation, write_evaluation

        summary = summarize_evaluation(self.original_evaluation) | {
            "model": self.original.name,
            "judge": "contains",
            "backend": self.backend,
        }
        (self.out / "evaluate").mkdir()
        run = self.stage_record("evaluate", {"model": self.spec}, self.original.lineage)
        write_evaluation(self.out / "evaluate", self.original_evaluation, summary, run, model=self.original.name)
        return summary

    # -- attribution ---------------------------------------------------------------------------------------------
    def attribution_config(self, method: str = "occlusion"):
        """Word-level occlusion (the paper's score) for ``occlusion``, else ``method`` with its defaults."""
        from unpact_mech.attribution.run import AttributionConfig

        if method == "occlusion":
            return AttributionConfig(
                method="occlusion", level="word", target=self.target, options={"batch_size": self.occlusion_batch}
            )
        return AttributionConfig(method=method, target=self.target)

    def attribute(
        self,
        model: "HookedLM",
        items: Sequence["QAItem"],
        label: str,
        method: str = "occlusion",
        like: "AttributionRun | None" = None,
    ) -> "AttributionRun":
        """``method`` attribution of ``items`` on ``model`` (see :meth:`attribution_config`); ``like``: the run (on
        the original) whose own-answer contexts to reuse, so an unlearned model is scored on the same tokens."""
        from unpact_mech.attribution.run import attribute_items

        own = like.own_answers if like is not None else None
        config = self.attribution_config(method)
        return attribute_items(model, items, config, label=label, progress=self.progress, own_answers=own)

    def keywords(
        self,
        run: "AttributionRun",
        items: Sequence["QAItem"],
        *,
        keytoken_alpha: float | None = None,
        keytoken_beta: int | None = None,
    ) -> list["ItemKeywords"]:
        """KeyTokens of the ORIGINAL model's word-level attribution ``run`` of ``items``, as keywords (the KeyToken
        rule's parameters default to the run's own)."""
        from unpact_mech.attacks.keywords import keywords_from_attribution
        from unpact_mech.scoring.tokens import encode_item

        encoded = [encode_item(self.original, it) for it in items]
        alpha = run.config.keytoken_alpha if keytoken_alpha is None else keytoken_alpha
        beta = run.config.keytoken_beta if keytoken_beta is None else keytoken_beta
        return keywords_from_attribution(encoded, run.units, keytoken_alpha=alpha, keytoken_beta=beta)

    def attribute_pair(
        self, name: str, before: "AttributionRun", unlearned: "HookedLM", items: Sequence["QAItem"], label: str
    ) -> dict[str, Any]:
        """Attribute ``items`` on ``unlearned`` with ``before``'s config, compare, write
        ``attribution/<label>/<name>/``; return the comparison summary."""
        from unpact_mech.attribution.outputs import attribution_summary, write_attribution
        from unpact_mech.attribution.run import attribute_items, compare_runs

        after = attribute_items(
            unlearned, items, before.config, label=label, progress=self.progress, own_answers=before.own_answers
        )
        comparison = compare_runs(before, after)
        summary = attribution_summary([before, after], comparison, [before.model, label], self.backend)
        out = self.out / "attribution" / label / name
        out.mkdir(parents=True)
        cfg = before.config
        run = self.stage_record(
            "attribute",
            {"method": cfg.method, "level": cfg.level, "target": cfg.target, "model": self.spec, "compare_to": label},
            unlearned.lineage,
        )
        write_attribution(
            out,
            [before, after],
            comparison,
            items,
            run,
            summary,
            title=f"{name} attribution: original vs {label}",
            subtitle=f"{before.model} vs {label}",
        )
        return comparison.summary

    # -- unlearning ----------------------------------------------------------------------------------------------
    def load(self, spec: "str | Path") -> "HookedLM":
        """``spec`` loaded as the session's models are (its backend, device and dtype)."""
        from unpact_mech.models import load_model

        return load_model(spec, backend=self.backend, device=self.device, dtype=self.dtype)

    @cached_property
    def training_targets(self) -> "UnlearningSet":
        """The unlearning targets of the forget and retain items (the ORIGINAL model's own answers, ``generated``),
        built once and shared by every method unlearned from a fresh copy of it (the copy has the same weights)."""
        from unpact_mech.unlearning.batches import UnlearningSet

        return UnlearningSet.from_items(self.original, self.items, where=self.data, batch_size=self.batch_size)

    def unlearn_fresh_copy(
        self, method: str, train_options: dict[str, Any], *, initial_evaluation: pd.DataFrame | None = None
    ) -> tuple["HookedLM", "UnlearnResult"]:
        """Load a fresh copy of the model, unlearn ``method`` on it (seeded) and write it to ``unlearned/<method>/``
        as a loadable model directory with its lineage (recorded in :attr:`lineages`)."""
        from unpact_mech.runtime import seed_everything
        from unpact_mech.unlearning import unlearn, write_unlearned

        seed_everything(self.seed)
        model = self.load(self.spec)
        shared = "target" not in train_options or train_options["target"] == "generated"
        result = unlearn(
            model,
            self.items,
            method,
            seed=self.seed,
            progress=self.progress,
            eval_batch_size=self.batch_size,
            max_new_tokens=self.max_new_tokens,
            data_label=self.data,
            initial_evaluation=initial_evaluation,
            targets=self.training_targets if shared else None,
            **train_options,
        )
        model.name = method
        (self.out / "unlearned").mkdir(exist_ok=True)
        config = {
            "method": method,
            "model": self.spec,
            "resolved": vars(result.config),
            "hyperparameters": dict(result.method.hp),
        }
        write_unlearned(
            model, result, self.out / "unlearned" / method, run=self.stage_record("unlearn", config, model.lineage)
        )
        self.lineages[method] = list(model.lineage)
        return model, result

    def original_keywords(
        self, items: Sequence["QAItem"] | None = None, run: "AttributionRun | None" = None
    ) -> list["ItemKeywords"]:
        """The recovery keywords of ``items`` (default: every item): KeyTokens of word-level occlusion of the bare
        answer (:data:`~unpact_mech.attacks.keywords.KEYWORD_TARGET`) on the ORIGINAL model — taken from ``run`` when
        it is such a run of these items, else computed."""
        from unpact_mech.attacks.keywords import KEYWORD_TARGET
        from unpact_mech.attribution.run import AttributionConfig, attribute_items

        items = self.items if items is None else items
        if (
            run is None
            or run.target != KEYWORD_TARGET
            or run.config.method != "occlusion"
            or run.config.level != "word"
        ):
            config = AttributionConfig(
                method="occlusion", level="word", target=KEYWORD_TARGET, options={"batch_size": self.occlusion_batch}
            )
            run = attribute_items(self.original, items, config, label="original (keywords)", progress=self.progress)
        return self.keywords(run, items)

    # -- recovery ------------------------------------------------------------------------------------------------
    def recovery_config(
        self, attacks: Sequence[Any], *, max_control_items: int | None = MAX_CONTROL_ITEMS, **options: Any
    ) -> "RecoveryConfig":
        """A :class:`~unpact_mech.recovery.run.RecoveryConfig` with this session's batch size, answer length and
        seed (``options``: any other field)."""
        from unpact_mech.recovery import RecoveryConfig

        return RecoveryConfig(
            attacks=list(attacks),
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            seed=self.seed,
            max_control_items=max_control_items,
            **options,
        )

    def recover(
        self,
        unlearned: "HookedLM",
        label: str,
        config: "RecoveryConfig",
        keywords: Sequence["ItemKeywords"] | None = None,
        *,
        folder: str = "recovery",
    ) -> "RecoveryResult":
        """The recovery experiment on ``unlearned`` (the original's evaluation reused), written to
        ``<folder>/<label>/`` (``recovery``; the demo's battery: ``battery``) with the lineage base -> unlearned ->
        recovered."""
        from unpact_mech.recovery.outputs import write_recovery
        from unpact_mech.recovery.run import recovered_lineage, run_recovery

        rec = run_recovery(
            self.original,
            unlearned,
            self.items,
            config,
            keywords=keywords,
            original_baseline=self.original_evaluation,
            progress=self.progress,
            original_memo=self.original_memo,
        )
        out = self.out / folder / label
        out.mkdir(parents=True)
        lineage = recovered_lineage(unlearned, rec.attacks, config.keyword_source, self.spec)
        run = self.stage_record(
            "recover",
            {
                "original": self.spec,
                "unlearned": f"unlearned/{label}",
                "attacks": [a.label for a in rec.attacks],
                "attack_settings": [a.settings() for a in rec.attacks],
                "keyword_source": config.keyword_source,
                "data": self.data,
                "max_control_items": config.max_control_items,
                "max_new_tokens": config.max_new_tokens,
                "judge": config.judge,
            },
            lineage,
        )
        write_recovery(
            out, rec, run, rec.summary | {"original": self.spec, "unlearned": label, "backend": self.backend}
        )
        return rec

    def lineage(self) -> list[dict[str, Any]]:
        """The original's lineage, then every later step of each unlearned model (``base -> unlearned`` per method)."""
        steps = list(self.original.lineage)
        for lineage in self.lineages.values():
            steps += lineage[1:]
        return steps
