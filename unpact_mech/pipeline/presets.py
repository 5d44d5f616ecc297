"""Presets shared by ``unpact demo`` and the experiment scripts: default methods and conditions, per-model
overrides, evaluation settings and how run directories are named.

The unlearning recipes (each method's own lr / steps) are tuned on SmolLM2 with ``builtin:real_facts``
(docs/unlearning.md); the tiny model is saturated on its synthetic facts and needs larger steps.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

#: Unlearning methods of the demo and the default of the experiment scripts.
DEFAULT_METHODS = ("ga_gdr", "npo_gdr")
#: The demo's prompt strategies: two emphasis prompts that recovered most in our first probe on SmolLM2, quoting,
#: and the neutral-instruction control (``unpact recover`` runs the whole registry).
DEMO_STRATEGIES = ("focus", "repeat_question", "quote", "neutral")
DEMO_INTERVENTIONS = ("patch", "pasta")
#: Data and training overrides per built-in model.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "smollm2": {"data": "builtin:real_facts", "train": {}},
    "tiny": {"data": "builtin:synthetic_facts", "train": {"lr": 5e-4, "steps": 6}},
}
#: Per-model overrides of single methods (lr and hyperparameters), on top of MODEL_DEFAULTS: the representation
#: methods write at layer 7 of SmolLM2, which the 2-layer tiny model does not have (values measured in the unit
#: tests' tiny runs of keyguard and rmu). A keyguard variant (a registered subclass of keyguard) takes keyguard's.
METHOD_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "rmu": {"lr": 1e-2, "hyperparameters": {"layer": 1, "c": 20.0, "alpha": 1.0}},
        "keyguard": {"lr": 1e-2, "hyperparameters": {"layer": 0, "late_layer": 1, "c": 20.0, "alpha": 1.0}},
    }
}
FALLBACK_DATA = "builtin:real_facts"
#: Evaluation settings of every pipeline stage besides the items per forward
#: (:data:`~unpact_mech.scoring.batching.EVAL_BATCH_SIZE`): occlusion variants per forward, and the cap on the
#: items of recovery's original-model and retain controls.
OCCLUSION_BATCH = 64
MAX_CONTROL_ITEMS = 16
RUNS_DIR = Path("unpact-runs")


def default_data(model: str) -> str:
    """The data set a built-in model is studied on (``builtin:real_facts`` for other models)."""
    return MODEL_DEFAULTS.get(model, {}).get("data", FALLBACK_DATA)


def train_overrides(model: str, method: str | None = None) -> dict[str, Any]:
    """Training options that replace the recipes' for ``model`` (empty for SmolLM2 and local directories), with
    ``method``'s own overrides for that model (:data:`METHOD_OVERRIDES`: ``lr`` and a ``hyperparameters`` dict)."""
    options = dict(MODEL_DEFAULTS.get(model, {}).get("train", {}))
    overrides = METHOD_OVERRIDES.get(model, {})
    override = overrides.get(method or "") or overrides.get(family_root(method), {})
    options |= {k: (dict(v) if isinstance(v, dict) else v) for k, v in override.items()}
    return options


def family_root(method: str | None) -> str:
    """``keyguard`` for keyguard and every registered variant of it; else the name itself ("" for None)."""
    if not method:
        return ""
    from unpact_mech.unlearning.methods.keyguard import keyguard_methods

    return "keyguard" if method in keyguard_methods() else method


def default_out(model: str, now: datetime | None = None, *, prefix: str = "demo") -> Path:
    """``unpact-runs/<prefix>-<model>-<YYYYmmdd-HHMMSS>`` (``-2``, ``-3``... if taken): never an earlier run."""
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in Path(model).name) or "model"
    stem = f"{prefix}-{safe}-{(now or datetime.now()):%Y%m%d-%H%M%S}"
    candidates = (RUNS_DIR / (stem if n == 1 else f"{stem}-{n}") for n in range(1, 10_000))
    return next(c for c in candidates if not c.exists())


def interrupted_runs(out: Path, prefix: str = "demo") -> list[Path]:
    """Temporary directories left next to ``out`` by runs of ``prefix`` that were killed before they finished."""
    parent = out.expanduser().absolute().parent
    if not parent.is_dir():
        return []
    return sorted(p for p in parent.glob(f"{prefix}-*.tmp-*") if p.is_dir())
