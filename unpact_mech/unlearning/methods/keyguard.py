"""``keyguard`` — RMU hardened against keyword emphasis: misdirect the forget items as the recovery attacks show them.

Base: :class:`~unpact_mech.unlearning.methods.rmu.RMU` at layer ℓ (``h`` = ``blocks.ℓ.hook_resid_post``, ``c·u`` its
control vector, ``M`` the question + answer positions of a row, ``A ⊂ M`` its ANSWER positions,
``mse(h, x) = (1/d)‖h − x‖²``, h of shape (B, T, d)). keyguard adds nine terms, each with its own weight; at weight 0
a term is not computed at all (no rows drawn, no forward, no random draw), so with all nine weights 0 keyguard IS
RMU, numerically, and with the four second-round weights (w_la, w_s, w_n, w_q) at 0 it is the first keyguard,
bitwise (both tested)::

    L = F(θ) + α·(L_r + w_r·L_rprompt + w_l·L_late_r + w_la·L_late_r0)
    F = L_f + w_p·L_prompt + w_a·L_act + w_s·L_steer + w_l·L_late_f + w_la·L_late_ans      (the forget part)
    ∇ = ∇L(θ) + w_n·∇F|_{θ + σ·rms·ε} + w_q·∇F|_{Q(θ)}          (two extra passes, gradients added before the step)

    L_f      = Σ_{b,t∈M} (1 + w_k·k[b,t])·mse(h[b,t], c·u) / Σ_{b,t∈M} (1 + w_k·k[b,t])      forget rows,
               k[b,t] = 1 at the ORIGINAL model's KeyToken positions (attribution-weighted forgetting)
    L_prompt = mean_{b,t∈M} mse(h[b,t], c·u)     forget items with the prompt rewritten (:data:`TRAIN_PROMPTS`)
    L_act    = mean_{b,t∈M} mse(h[b,t], c·u)     forget items with the residual at their KeyToken positions patched
               from the frozen original at layers 0..ℓ−1 (the attack registry's ``patch``)
    L_r      = RMU's retain term (h of retain rows kept at the frozen reference's)
    L_rprompt= the same on retain items rewritten by :data:`TRAIN_PROMPTS` (emphasis must not mean "forget")
    L_late_f = mean_{b,t∈M} mse(h'[b,t], c·u')   h' = the residual at a LATE layer ℓ' (default n_layers − 3), on the
               forget, prompt-attack and activation-attack rows; u' a second random direction (seed + 1)
    L_late_r = RMU's retain term at ℓ' on the retain and retain-prompt rows
    L_late_ans = mean_{b,t∈A} mse(h'[b,t], c·u')   the late misdirection on the ANSWER positions only, same rows as
               L_late_f (:func:`~.keyguard_terms.answer_positions`: the tokens of the answer, not the question)
    L_late_r0 = RMU's retain term at ℓ' on the retain rows (from the late anchor's one reference forward)
    L_steer  = mean_{b,t∈M} mse(h[b,t], c·u)     the forget rows again (``steer`` rows), the policy steered toward
               the original: h_L[b, P_b] += c_s·d_L at their KeyToken positions P_b for every L of the ``steer``
               attack's default layers (the first half, at its hook ``hook_resid_post``), with
               d_L = Σ_{b,p∈P_b} (h_ref,L − h_θ,L)[b,p] / Σ_b |P_b| (d,) re-fitted without grad on the micro-batch's
               forget rows from one forward of the frozen original and one of the current policy
    F|_{θ+σ·rms·ε}: F at every trained matrix W replaced by W + σ·rms(W)·ε, ε ~ N(0, 1) of W's shape seeded by
               (seed, step, name) — randomized smoothing against relearning; the weights are restored bit-exactly
    F|_{Q(θ)}: F at every trained matrix replaced by its round trip Q(W) through the recovery battery's first
               ``quantize`` grid (the model's source GGUF types, else uniform Q4_1): a straight-through gradient
               that pushes the weights across grid boundaries, so rounding cannot undo the update

``w_la`` restricts the late misdirection to the answer tokens (the question positions at ℓ' are left to the retain
anchor); it works with ``w_l = 0`` (then ℓ', u', the late MLPs and the patch layers 0..ℓ'−1 come from it alone). The
After training, ``grid_snap`` = ρ > 0 moves the fraction ρ of each trained matrix's weights with the largest update
(relative to their grid step) one whole step of the same grid in the update's direction
(:mod:`~unpact_mech.unlearning.grid_snap`): the update then survives re-quantization in those weights, where AdamW
at this recipe moves every weight by about a tenth of a step and rounding returns the base. The
two extra passes use the loop's :meth:`~unpact_mech.unlearning.methods.base.UnlearningMethod.extra_passes` seam (one
more forward + backward of the micro-batch each; ``fsdp`` is refused).

The late term is the representation-level forgetting where the layer study finds the answer (the last blocks): the
``patch`` attack restores the original's residual at the keyword positions at EVERY layer, so misdirection at ℓ
alone cannot hide what later layers read there. With it, the MLP down-projections of ℓ'−2..ℓ' are trained too and
the activation attack patches layers 0..ℓ'−1.

Keywords: KeyTokens of word-level occlusion on the base model (α 0.5, β 3 — the recovery suite's default source),
computed once in :meth:`setup`. Trained-against attacks: the suite's ``focus`` and ``uppercase`` rewrites, two
training-only rewrites of the same families as ``neutral`` and ``repeat_keywords`` (:data:`TRAIN_PROMPTS`) and
``patch`` below layer ℓ. A suite condition is a held-out attack only if its FAMILY is not trained against
(:func:`trained_families`): ``repeat_question``, ``scale``, ``steer`` and ``pasta`` with the default weights;
``steer`` is trained against once ``w_s > 0``, the ``quantize`` conditions once ``w_q > 0`` or ``grid_snap > 0``.
The registered variants (:mod:`~unpact_mech.unlearning.methods.keyguard_variants`) switch the second-round terms
on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from unpact_mech.attacks.base import ActivationAttack, AttackEnv, PromptAttack
from unpact_mech.attacks.prompt import INSTRUCTION, KEYWORDS_NAMED
from unpact_mech.attacks.registry import get_attack
from unpact_mech.errors import InputError
from unpact_mech.models.hooks import hook_name
from unpact_mech.unlearning import losses
from unpact_mech.unlearning.adversarial import KINDS, AttackPool, build_attack_pool, source
from unpact_mech.unlearning.batches import sample_indices
from unpact_mech.unlearning.methods import keyguard_terms as terms
from unpact_mech.unlearning.methods.base import PolicyOutput, Recipe, WeightPass
from unpact_mech.unlearning.methods.registry import UNLEARNING_METHODS, register_unlearning_method
from unpact_mech.unlearning.methods.rmu import RMU, control_vector, mlp_out_pattern

if TYPE_CHECKING:
    from unpact_mech.attacks.activation import Steer
    from unpact_mech.models.hooked import HookedLM
    from unpact_mech.models.hooks import Intervention
    from unpact_mech.unlearning.batches import StepBatch, UnlearningSet
    from unpact_mech.unlearning.targets import TrainTarget

#: Prompt rewrites keyguard trains on: two of the attack registry's strategies and two rewrites that are not in it.
TRAIN_PROMPTS: tuple[PromptAttack, ...] = (
    get_attack("focus", kind="strategy"),  # type: ignore[assignment]
    get_attack("uppercase", kind="strategy"),  # type: ignore[assignment]
    PromptAttack(  # imitates the suite's neutral instruction: same family
        "train_instruction",
        "training only: a generic instruction",
        family=INSTRUCTION,
        template="Please answer this question: {question}",
        uses_keywords=False,
    ),
    PromptAttack(  # imitates repeat_keywords: same family
        "train_suffix",
        "training only: keywords named after the question",
        family=KEYWORDS_NAMED,
        template="{question} Think about {keywords}.",
    ),
)
#: The registry's activation attack keyguard trains against.
ACTIVATION_ATTACK = "patch"
#: The registry's attacks behind the steer rows and the quantization-aware pass.
STEER_ATTACK, QUANT_ATTACK = "steer", "quantize"


def trained_families(
    hyperparameters: Mapping[str, float] | None = None, method: "str | type[KeyGuard]" = "keyguard"
) -> frozenset[str]:
    """Families of the attacks a keyguard-family ``method`` (a registered name or the class) trains against with
    ``hyperparameters`` over ITS OWN defaults (None: the defaults; ``keyguard2``'s differ from ``keyguard``'s): the
    families of :data:`TRAIN_PROMPTS` when the prompt-attack or retain-attack term is on (both show the model those
    rewrites), ``patch``'s family when the activation-attack term is on, ``steer``'s when the steer term is on and
    ``quantize``'s when the quantization-aware pass or grid snapping is on. A recovery condition counts as a HELD-OUT
    attack only if its family is not in this set — a training rewrite that imitates a suite condition
    (``train_instruction`` ~ ``neutral``, ``train_suffix`` ~ ``repeat_keywords``) takes that condition's family with
    it."""
    cls = UNLEARNING_METHODS.get(method) if isinstance(method, str) else method
    if cls is None or not issubclass(cls, KeyGuard):
        raise ValueError(f"trained_families: {method!r} is not a keyguard-family method")
    hp = dict(cls.hyperparameters) | dict(hyperparameters or {})
    families: set[str] = set()
    if hp["prompt_attacks"] > 0 or hp["retain_attacks"] > 0:
        families |= {a.family for a in TRAIN_PROMPTS}
    for weight, attack in (("activation_attacks", ACTIVATION_ATTACK), ("steer_attacks", STEER_ATTACK),
                           ("quant_weight", QUANT_ATTACK), ("grid_snap", QUANT_ATTACK)):  # fmt: skip
        if hp[weight] > 0:
            families.add(get_attack(attack).family)
    return frozenset(families)


def keyguard_methods() -> tuple[str, ...]:
    """The registered keyguard-family methods (``keyguard`` and its variants), in registry order."""
    return tuple(name for name, cls in UNLEARNING_METHODS.items() if issubclass(cls, KeyGuard))


#: keyguard's first-round ingredients: the weights of its five extra terms (all 0 = RMU).
INGREDIENTS = ("prompt_attacks", "activation_attacks", "keyword_weight", "retain_attacks", "late_weight")
#: Every ingredient, both rounds (the second round's are 0 in ``keyguard`` itself).
ALL_INGREDIENTS = INGREDIENTS + terms.NEW_INGREDIENTS
#: Hyperparameter (weight) that switches each kind of attack row on.
KIND_WEIGHTS = {
    "prompt": "prompt_attacks", "activation": "activation_attacks", "retain_prompt": "retain_attacks",
    terms.STEER_KIND: "steer_attacks",
}  # fmt: skip
#: Random-sample streams of the attack rows (the loop uses 0 for forget and 1 for retain items).
STREAMS = {kind: 10 + i for i, kind in enumerate(KINDS)}


@register_unlearning_method
class KeyGuard(RMU):
    name = "keyguard"
    summary = (
        "RMU + misdirection under keyword emphasis (rewritten prompts, original activations patched in at "
        "KeyTokens), KeyToken-weighted, at a late layer too; retain anchored under the same rewrites"
    )
    hyperparameters = {
        "layer": 7,
        "c": 100.0,
        "alpha": 100.0,
        "prompt_attacks": 1.0,
        "activation_attacks": 1.0,
        "keyword_weight": 1.0,
        "retain_attacks": 1.0,
        "late_weight": 0.3,
        "late_layer": -3,
        **terms.NEW_HYPERPARAMETERS,
    }
    recipe = Recipe(lr=1e-3, steps=6)
    pool: AttackPool | None = None
    n_layers: int = 0
    attack: ActivationAttack | None = None
    forget_ids: tuple[str, ...] = ()
    late_control: Tensor | None = None
    seed: int = 0
    #: the steer rows (the forget targets, tagged ``attack:steer``), the resolved ``steer`` attack, and the
    #: directions of the last batch they were fitted on (the weight passes of that batch reuse them)
    steer_pool: tuple["TrainTarget", ...] = ()
    steer: "Steer | None" = None
    steer_fit: "tuple[StepBatch, dict[int, Tensor]] | None" = None
    grid: terms.QuantGrid | None = None
    #: the grid the trained matrices are snapped onto after training (``grid_snap`` > 0); kept after teardown, which
    #: the loop calls before :meth:`unlearned_weights`
    snap_grid: terms.QuantGrid | None = None

    def check_hyperparameters(self) -> None:
        super().check_hyperparameters()
        for key in (*ALL_INGREDIENTS, "noise_scale"):
            if self.hp[key] < 0:
                raise InputError(f"method {self.name}: {key} must be >= 0, got {self.hp[key]}")
        if self.hp["grid_snap"] > 1:
            raise InputError(f"method {self.name}: grid_snap is a fraction in [0, 1], got {self.hp['grid_snap']}")
        late = self.hp["late_layer"]
        if float(late) != int(late):
            raise InputError(f"method {self.name}: late_layer must be an integer (negative = from the end), got {late}")
        self.hp["late_layer"] = int(late)

    @property
    def uses_late(self) -> bool:
        """Whether layer ℓ' is used (the late term or the late answer-only term is on)."""
        return self.hp["late_weight"] > 0 or self.hp["late_answer_weight"] > 0

    def late_layer(self, n_layers: int) -> int:
        """ℓ' as a layer index (a negative ``late_layer`` counts from the end: −3 -> n_layers − 3)."""
        late = int(self.hp["late_layer"])
        return late + n_layers if late < 0 else late

    def check_model(self, model: "HookedLM") -> None:
        super().check_model(model)
        n = model.shape.n_layers
        if self.uses_late and not self.layer < self.late_layer(n) < n:
            raise InputError(
                f"method {self.name}: late_layer {self.hp['late_layer']} must name a layer after layer "
                f"{self.layer} (model has layers 0..{n - 1})"
            )

    def default_trainable(self, model: "HookedLM") -> str:
        """RMU's MLP down-projections of ℓ−2..ℓ, plus those of ℓ'−2..ℓ' when a late term is on."""
        if not self.uses_late:
            return super().default_trainable(model)
        late = self.late_layer(model.shape.n_layers)
        return mlp_out_pattern(
            model, [*range(max(0, self.layer - 2), self.layer + 1), *range(max(0, late - 2), late + 1)]
        )

    def late_hook(self, n_layers: int) -> str:
        return hook_name(self.late_layer(n_layers), "hook_resid_post")

    def cache_hooks(self, model: "HookedLM") -> list[str]:
        return super().cache_hooks(model) + ([self.late_hook(model.shape.n_layers)] if self.uses_late else [])

    def active(self, kind: str) -> bool:
        """Whether attack rows of ``kind`` are drawn (their weight is > 0; retain rows also need α > 0)."""
        return self.hp[KIND_WEIGHTS[kind]] > 0 and (kind != "retain_prompt" or self.needs_retain)

    @property
    def needs_keywords(self) -> bool:
        return self.hp["keyword_weight"] > 0 or any(self.active(k) for k in (*KINDS, terms.STEER_KIND))

    # -- setup: KeyTokens of the base model and the attack rows -----------------------------------------------------
    def setup(self, model: "HookedLM", data: "UnlearningSet", *, seed: int, batch_size: int = 16) -> None:
        super().setup(model, data, seed=seed, batch_size=batch_size)
        self.pool, self.forget_ids = None, tuple(t.item_id for t in data.forget)
        self.n_layers, self.seed, self.steer_fit = model.shape.n_layers, seed, None
        if self.hp["quant_weight"] > 0:
            self.grid = terms.battery_grid(model)
        self.snap_grid = terms.battery_grid(model) if self.hp["grid_snap"] > 0 else None
        if self.uses_late:
            self.late_control = control_vector(model.shape.d_model, self.hp["c"], seed + 1).to(model.device)
        if not self.needs_keywords:
            return
        from unpact_mech.attacks.keywords import select_keywords
        from unpact_mech.scoring.tokens import encode_items

        items = list(data.forget_items) + list(data.retain_items)
        targets = list(data.forget) + list(data.retain)
        # the recovery suite's keywords: KeyTokens of the gold answer right after the plain prompt
        keywords = select_keywords("attribution", model, items, encode_items(model, items), batch_size=batch_size)
        triples = list(zip(items, targets, keywords))
        n = len(data.forget)
        self.pool = build_attack_pool(model, triples[:n], triples[n:], TRAIN_PROMPTS)
        if (self.active("activation") or self.active(terms.STEER_KIND)) and self.reference is None:
            self.reference = model.reference_copy()  # RMU builds it for the retain term; patch and steer need it too
            self.reference.hf.to(model.device)
        if self.active("activation"):
            top = self.late_layer(self.n_layers) if self.uses_late else self.layer
            self.attack = get_attack("patch", kind="intervention").configure(layers=tuple(range(top))).resolve(model)
        if self.active(terms.STEER_KIND):
            self.steer = get_attack(STEER_ATTACK, kind="intervention").resolve(model)  # type: ignore[assignment]
            self.steer_pool = tuple(replace(t, source=source(terms.STEER_KIND)) for t in data.forget)

    def teardown(self) -> None:
        self.pool, self.steer_pool, self.steer_fit, self.grid = None, (), None, None
        super().teardown()

    # -- the loop's seams: extra rows and interventions -------------------------------------------------------------
    def extra_targets(self, seed: int, slot: int, batch_size: int) -> Sequence["TrainTarget"]:
        """``batch_size`` rows of every active kind, drawn like the loop draws forget rows (shuffled epochs)."""
        if self.pool is None:
            return ()
        rows: list["TrainTarget"] = []
        for kind in KINDS:
            pool = self.pool.rows[kind]
            if self.active(kind) and pool:
                n = min(batch_size, len(pool))
                rows += [pool[i] for i in sample_indices(len(pool), seed, STREAMS[kind], slot * n, n)]
        if self.active(terms.STEER_KIND) and self.steer_pool:  # the loop's own forget draw: the batch's forget rows
            pool, n = self.steer_pool, min(batch_size, len(self.steer_pool))
            rows += [pool[i] for i in sample_indices(len(pool), seed, terms.FORGET_STREAM, slot * n, n)]
        return rows

    def rows_of(self, batch: "StepBatch", kind: str) -> list[int]:
        """Batch row indices of the extra rows of ``kind`` (none when that kind is not active)."""
        if not self.active(kind):
            return []
        start = batch.extra_rows.start
        return [start + j for j, t in enumerate(batch.extra) if t.source == source(kind)]

    def keyword_mask(self, batch: "StepBatch", rows: Sequence[int], item_ids: Sequence[str]) -> Tensor:
        """(B, T) bool: the KeyToken positions of ``item_ids`` on batch ``rows`` (plain prompts only)."""
        assert self.pool is not None
        mask = torch.zeros(batch.tf.input_ids.shape, dtype=torch.bool)
        for row, item_id in zip(rows, item_ids):
            mask[row, list(self.pool.keyword_positions.get(item_id, ()))] = True
        return mask.to(batch.tf.input_ids.device)

    def row_positions(self, batch: "StepBatch", rows: Sequence[int]) -> list[tuple[int, ...]]:
        """Per batch row, the KeyToken positions of the extra ``rows`` (empty for every other row)."""
        assert self.pool is not None
        positions: list[tuple[int, ...]] = [()] * batch.tf.input_ids.shape[0]
        for r in rows:
            positions[r] = self.pool.keyword_positions.get(batch.extra[r - batch.extra_rows.start].item_id, ())
        return positions

    def interventions(self, model: "HookedLM", batch: "StepBatch") -> Sequence["Intervention"]:
        """The attack registry's ``patch`` at the KeyToken positions of the activation rows (layers 0..ℓ−1, from
        the frozen original) and the re-fitted ``steer`` at those of the steer rows; the other rows are untouched."""
        out: list["Intervention"] = []
        rows = self.rows_of(batch, "activation")
        if rows and self.attack is not None and self.pool is not None:
            assert self.reference is not None
            env = AttackEnv(original=self.reference)
            out += self.attack.interventions(self.row_positions(batch, rows), env)(batch.tf.layout)
        rows = self.rows_of(batch, terms.STEER_KIND)
        if rows and self.steer is not None and self.pool is not None:
            directions = self.steer_directions(model, batch)
            out += terms.steer_interventions(
                batch.tf.layout,
                self.steer.hook,
                self.row_positions(batch, rows),
                directions,
                self.hp["steer_attack_coef"],
            )
        return out

    def steer_directions(self, model: "HookedLM", batch: "StepBatch") -> dict[int, Tensor]:
        """``{L: d_L}`` of the ``steer`` attack fitted (no grad) on ``batch``'s forget rows at their KeyTokens, from
        the frozen original and the current policy; once per micro-batch (its extra weight passes reuse it)."""
        if self.steer_fit is not None and self.steer_fit[0] is batch:
            return self.steer_fit[1]
        assert self.steer is not None and self.reference is not None
        f = batch.forget_rows
        mask = self.keyword_mask(batch, range(batch.n_forget), [self.forget_ids[i] for i in batch.forget_index])
        ids = batch.tf.input_ids[f]
        directions = terms.fit_steering(self.reference, model, ids, mask[f], self.steer.layers or (), self.steer.hook)
        self.steer_fit = (batch, directions)
        return directions

    @property
    def weight_pass_labels(self) -> tuple[str, ...]:
        return tuple(label for label, w in (("noise", "noise_weight"), ("quant", "quant_weight")) if self.hp[w] > 0)

    def extra_passes(self, step: int) -> Sequence[WeightPass]:
        """The smoothing pass (w_n: the forget part F at noisy weights, seeded by (seed, step)) and the
        quantization-aware pass (w_q: F at the battery grid's Q(W)), each only when its weight is > 0."""
        passes: list[WeightPass] = []
        w_n, w_q = self.hp["noise_weight"], self.hp["quant_weight"]
        if w_n > 0:
            sigma = self.hp["noise_scale"]

            def noisy(name: str, w: Tensor) -> Tensor | None:
                return terms.noisy_weight(name, w, seed=self.seed, step=step, sigma=sigma)

            passes.append(WeightPass("noise", noisy, lambda out: w_n * self.forget_loss(out)))
        if w_q > 0:
            if self.grid is None:
                raise RuntimeError("setup() was not called")
            passes.append(WeightPass("quant", self.grid, lambda out: w_q * self.forget_loss(out)))
        return passes

    # -- the objective ----------------------------------------------------------------------------------------------
    def forget_loss(self, out: PolicyOutput) -> Tensor:
        assert self.control is not None, "setup() was not called"
        b = out.batch
        h = out.cache[hook_name(self.layer, "hook_resid_post")]
        w_k = self.hp["keyword_weight"]
        if w_k > 0:
            rows = list(range(b.n_forget))
            kw = self.keyword_mask(b, rows, [self.forget_ids[i] for i in b.forget_index])
            f = b.forget_rows
            loss = losses.weighted_rmu_forget(h[f], b.region[f], 1.0 + w_k * kw[f].float(), self.control)
        else:
            loss = super().forget_loss(out)
        attack_rows = {kind: self.rows_of(b, kind) for kind in ("prompt", "activation", terms.STEER_KIND)}
        for kind, rows in attack_rows.items():
            if rows:
                loss = loss + self.hp[KIND_WEIGHTS[kind]] * losses.rmu_forget(h[rows], b.region[rows], self.control)
        if self.uses_late:
            assert self.late_control is not None
            rows = list(range(b.n_forget)) + attack_rows["prompt"] + attack_rows["activation"]
            h_late = out.cache[self.late_hook(self.n_layers)]
            w_l, w_la = self.hp["late_weight"], self.hp["late_answer_weight"]
            if w_l > 0:
                loss = loss + w_l * losses.rmu_forget(h_late[rows], b.region[rows], self.late_control)
            if w_la > 0:  # the same rows, their answer tokens only
                answers = terms.answer_positions(b.tf)[rows]
                loss = loss + w_la * losses.rmu_forget(h_late[rows], answers, self.late_control)
        return loss

    def retain_loss(self, out: PolicyOutput) -> Tensor:
        """RMU's term (its own reference forward, so that with the extra weights at 0 this IS RMU), then the
        retain-prompt anchor at ℓ and the late anchors at ℓ' (w_l: retain + retain-prompt rows; w_la: retain rows)
        from ONE reference forward over the rows they need."""
        loss = super().retain_loss(out)
        b = out.batch
        extra = self.rows_of(b, "retain_prompt")
        early = hook_name(self.layer, "hook_resid_post")
        late = self.late_hook(self.n_layers) if self.uses_late else None
        hooks = ([early] if extra else []) + ([late] if late else [])
        if not hooks:
            return loss
        retain = list(range(b.retain_rows.start, b.retain_rows.stop))
        rows = (retain if self.uses_late else []) + extra
        assert self.reference is not None
        with torch.no_grad():
            ref = self.reference.forward(b.tf.input_ids[rows], cache=hooks, logits_to_keep=1).cache
        if extra:  # the last len(extra) rows of the reference batch
            h_ref = ref[early][len(rows) - len(extra) :]
            loss = loss + self.hp["retain_attacks"] * losses.rmu_retain(out.cache[early][extra], h_ref, b.region[extra])
        if late and self.hp["late_weight"] > 0:
            loss = loss + self.hp["late_weight"] * losses.rmu_retain(out.cache[late][rows], ref[late], b.region[rows])
        if late and self.hp["late_answer_weight"] > 0:  # the retain rows come first in the reference batch
            n = len(retain)
            loss = loss + self.hp["late_answer_weight"] * losses.rmu_retain(
                out.cache[late][retain], ref[late][:n], b.region[retain]
            )
        return loss

    # -- after training: grid snapping -----------------------------------------------------------------------------
    @property
    def transforms_weights(self) -> bool:  # type: ignore[override]  # the base class's ClassVar, per instance here
        """Whether the unlearned weights differ from the trained ones (``grid_snap`` > 0)."""
        return self.hp["grid_snap"] > 0

    def unlearned_weights(self, base: dict[str, Tensor], trained: dict[str, Tensor]) -> dict[str, Tensor]:
        """The trained matrices with the fraction ``grid_snap`` of each snapped onto the battery's first quantization
        grid (:func:`~unpact_mech.unlearning.grid_snap.snap_matrices`, steps from the BASE weights); the trained ones
        when ``grid_snap`` is 0. Every evaluation during training sees these weights too."""
        if self.hp["grid_snap"] <= 0 or self.snap_grid is None:
            return trained
        from unpact_mech.unlearning.grid_snap import snap_matrices

        return snap_matrices(base, trained, self.snap_grid.plan, self.hp["grid_snap"], self.snap_grid.group_size)
