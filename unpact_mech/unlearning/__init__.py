"""Unlearning on the shared hooked model: GA, GA+GDR, GA+KLR, NPO, NPO+GDR, NPO+KLR, SimNPO, RMU, Task Vector.

* :mod:`~unpact_mech.unlearning.losses` — the objectives as pure functions (formulas in the docstrings);
* :mod:`~unpact_mech.unlearning.methods` — one short file per method, in a registry (a method is its loss);
* :mod:`~unpact_mech.unlearning.loop` — the one accelerate training loop (batching, accumulation, schedule,
  clipping, trainable-parameter regex, checkpoints/resume, dynamics, NaN and no-change guards);
* :mod:`~unpact_mech.unlearning.task_vector` — weight arithmetic on state dicts;
* :func:`unlearn` / :func:`write_unlearned` — the Python API behind ``unpact unlearn``.

The loop updates the parameters of ``model.hf`` — the module the TransformerLens/nnsight backend wraps — so
attribution before and after unlearning runs on one object; references are explicit frozen copies.
"""

from unpact_mech.unlearning import losses
from unpact_mech.unlearning.loop import (
    LR_SCHEDULES,
    TrainConfig,
    Trainer,
    TrainResult,
    UnlearningFailed,
    lr_factor,
    train,
)
from unpact_mech.unlearning.methods import (
    HYPERPARAMETERS,
    UNLEARNING_METHODS,
    Recipe,
    UnlearningMethod,
    get_unlearning_method,
    register_unlearning_method,
)
from unpact_mech.unlearning.run import (
    ForgettingWarning,
    UnlearnResult,
    resolve_config,
    unlearn,
    weak_forgetting,
    write_unlearned,
)

__all__ = [
    "ForgettingWarning",
    "HYPERPARAMETERS",
    "LR_SCHEDULES",
    "UNLEARNING_METHODS",
    "Recipe",
    "TrainConfig",
    "Trainer",
    "TrainResult",
    "UnlearnResult",
    "UnlearningFailed",
    "UnlearningMethod",
    "get_unlearning_method",
    "losses",
    "lr_factor",
    "register_unlearning_method",
    "resolve_config",
    "train",
    "unlearn",
    "weak_forgetting",
    "write_unlearned",
]
