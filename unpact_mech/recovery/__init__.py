"""The recovery experiment: run conditions of the attack registry (:mod:`unpact_mech.attacks`) on an unlearned
model with controls — the runner (:mod:`.run`), controls (:mod:`.controls`), rates (:mod:`.metrics`), the layer
ablation (:mod:`.ablation`) and outputs (:mod:`.outputs`)."""

from unpact_mech.recovery.metrics import Rate, bootstrap_ci, destructive_rate, recovery_rate
from unpact_mech.recovery.run import RecoveryConfig, RecoveryResult, check_compatible, recovered_lineage, run_recovery

__all__ = [
    "Rate",
    "RecoveryConfig",
    "RecoveryResult",
    "bootstrap_ci",
    "check_compatible",
    "destructive_rate",
    "recovered_lineage",
    "recovery_rate",
    "run_recovery",
]
