"""``scripts/gpu_check.py`` (``make gpu-check``): refuses a machine without CUDA in one line, and its bfloat16-vs-
float32 agreement part runs (on the CPU with ``tiny``, the one place it can run here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu_check.py"


def test_without_cuda_it_stops_in_one_line(tmp_path):
    if torch.cuda.is_available():  # pragma: no cover - a GPU machine runs the real check instead
        return
    proc = subprocess.run([sys.executable, SCRIPT, "--out", tmp_path / "x.json"], capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "CUDA is not available" in proc.stderr and not (tmp_path / "x.json").exists()


def test_the_agreement_part_on_cpu(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    out = tmp_path / "gpu_check.json"
    argv = ["--device", "cpu", "--model", "tiny", "--data", "builtin:synthetic_facts", "--parts", "agreement"]
    assert gpu_check.main([*argv, "--out", str(out)]) == 0
    res = json.loads(out.read_text())["agreement"]
    assert res["items"] == 32 and res["same_answers"] == 1.0
    assert res["accuracy_float32"] == res["accuracy_bfloat16"] == 1.0
    assert 0 < res["max_logit_diff_rel"] <= 2e-2 and 0 < res["mean_abs_lp_diff"] < 0.05
    assert capsys.readouterr().out.startswith("agreement ")
