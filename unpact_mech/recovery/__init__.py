"""The recovery experiment: run conditions of the attack registry (:mod:`unpact_mech.attacks`) on an unlearned
model with controls — the runner (:mod:`.run`), controls (:mod:`.controls`), rates (:mod:`.metrics`), the layer
ablation (:mod:`.ablation`) and outputs (:mod:`.outputs`)."""

from unpact_mech.recovery.metrics import eligible_for_recovery, recovery_rate
from unpact_mech.recovery.run import (
    RecoveryConfig,
    RecoveryResult,
    RunPlan,
    check_compatible,
    recovered_lineage,
    run_recovery,
)

__all__ = [
    "RecoveryConfig",
    "RecoveryResult",
    "RunPlan",
    "check_compatible",
    "eligible_for_recovery",
    "recovered_lineage",
    "recovery_rate",
    "run_recovery",
]
