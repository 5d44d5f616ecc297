"""Training checkpoints: enough to resume a run bit for bit, nothing loaded through pickle.

A checkpoint is a directory ``step-000010/`` in the run's checkpoint directory:

* ``trainable.safetensors`` — the trainable parameters under their HF names (the others never change: a resumed
  run reloads them from the input model);
* ``optimizer.pt`` — ``{"optimizer": ..., "scheduler": ...}`` state dicts, read back with
  ``torch.load(weights_only=True)`` (tensors and plain containers only);
* ``progress.json`` — the step, the run's fingerprint (what must not change on resume), the loss log and the
  dynamics rows so far.

Each is written to a temporary sibling and renamed into place, so a kill leaves complete checkpoints only; older
ones are removed once a newer one is complete (``keep``). Batches are a pure function of ``(seed, step)`` (see
:mod:`~unpact_mech.unlearning.batches`) and training runs without dropout, so no RNG state is needed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from unpact_mech.errors import InputError
from unpact_mech.io.results import write_json

PREFIX = "step-"


@dataclass
class Checkpoint:
    step: int
    trainable: dict[str, Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    progress: dict[str, Any]


class CheckpointStore:
    """The checkpoints of one run, kept in ``directory`` (which is never the input model directory)."""

    def __init__(self, directory: str | os.PathLike, fingerprint: dict[str, Any], *, keep: int = 1) -> None:
        self.directory = Path(directory)
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
        self.keep = max(1, keep)

    def steps(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.directory.is_dir():
            return []
        done = [
            p
            for p in self.directory.iterdir()
            if p.is_dir()
            and p.name.startswith(PREFIX)
            and p.name[len(PREFIX) :].isdigit()
            and (p / "progress.json").is_file()
        ]
        return sorted(done, key=lambda p: int(p.name[len(PREFIX) :]))

    def latest(self) -> Path | None:
        found = self.steps()
        return found[-1] if found else None

    def save(
        self,
        step: int,
        trainable: dict[str, Tensor],
        optimizer: dict[str, Any],
        scheduler: dict[str, Any],
        progress: dict[str, Any],
    ) -> Path:
        from safetensors.torch import save_file

        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"{PREFIX}{step:06d}"
        tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}.tmp-", dir=self.directory))
        try:
            save_file({k: v.detach().contiguous() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
            torch.save({"optimizer": optimizer, "scheduler": scheduler}, tmp / "optimizer.pt")
            write_json(tmp / "progress.json", {"step": step, "fingerprint": self.fingerprint, **progress})
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for old in self.steps()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def check_fingerprint(self, path: Path) -> None:
        """Raise :class:`InputError` naming the settings that differ from the checkpointed run."""
        saved = json.loads((path / "progress.json").read_text()).get("fingerprint", {})
        diff = sorted(k for k in set(saved) | set(self.fingerprint) if saved.get(k) != self.fingerprint.get(k))
        if diff:
            detail = "; ".join(f"{k}: {saved.get(k)!r} -> {self.fingerprint.get(k)!r}" for k in diff[:4])
            raise InputError(f"--resume: checkpoint {path} was made with different settings ({detail})")

    def load(self, path: Path) -> Checkpoint:
        from safetensors.torch import load_file

        self.check_fingerprint(path)
        progress = json.loads((path / "progress.json").read_text())
        states = torch.load(path / "optimizer.pt", weights_only=True)
        return Checkpoint(
            int(progress["step"]),
            load_file(str(path / "trainable.safetensors")),
            states["optimizer"],
            states["scheduler"],
            progress,
        )

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
