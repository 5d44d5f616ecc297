"""Foundation benchmarks on SmolLM2-135M (make bench): backend overhead and batched answer scoring.

* hooked forward (caching one residual hook) through each backend vs a plain HF forward (default sdpa
  attention), batch 8x64 — goal <= 1.05x;
* batched teacher-forced answer log-prob vs a per-item loop over the same 16 items.
"""

from __future__ import annotations

import pytest
import torch

from unpact_mech.scoring.logprob import score_answers
from unpact_mech.scoring.tokens import encode_items

pytestmark = pytest.mark.benchmark


@pytest.fixture(scope="module")
def plain_hf(smollm2):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2.source_dir, dtype=torch.float32).eval()  # HF default: sdpa


@pytest.fixture(scope="module")
def ids():
    return torch.randint(100, 40000, (8, 64), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
def test_hooked_forward_vs_plain_hf(benchmark, compare, backend, smollm2, smollm2_nnsight, plain_hf, ids):
    model = smollm2 if backend == "transformer_lens" else smollm2_nnsight
    hook = "blocks.15.hook_resid_post"

    def hooked():
        with torch.no_grad():
            return model.forward(ids, cache=[hook]).logits

    def plain():
        with torch.no_grad():
            return plain_hf(input_ids=ids).logits

    key = "hooked_forward_vs_hf" + ("" if backend == "transformer_lens" else f"_{backend}")
    compare(
        benchmark, f"hooked forward 8x64 ({backend}) vs plain HF", hooked, plain, rounds=5, goal="goal <= 1.05x",
        key=key,
    )  # fmt: skip


def test_batched_logprob_vs_loop(benchmark, compare, smollm2, real_facts):
    enc = encode_items(smollm2, real_facts[:16])
    prompts, answers = [e.prompt.ids for e in enc], [e.answer_ids for e in enc]

    def batched():
        return score_answers(smollm2, prompts, answers, batch_size=16)

    def loop():
        return [score_answers(smollm2, [p], [a]) for p, a in zip(prompts, answers)]

    compare(benchmark, "answer log-prob, 16 items: batched vs per-item loop", batched, loop, rounds=3)
