"""Shared unit fixtures: the tiny model and two 'unlearned' variants of it (recovery and attack tests).

* ``blocks_perturbed``: noise on the transformer blocks only (embeddings, final norm, unembedding shared with the
  original), so patching every layer's residual from the original must reproduce the original logits exactly.
* ``ga_unlearned``: a few steps of plain gradient ascent on the forget answers (written out here, independent of
  the unlearning package), saved to a directory for CLI tests.
"""

from __future__ import annotations

import pytest
import torch

from unpact_mech import load_model
from unpact_mech.scoring.batching import right_pad_teacher_forced
from unpact_mech.scoring.logprob import masked_mean, token_logprobs
from unpact_mech.scoring.tokens import encode_item


@pytest.fixture(scope="session")
def original():
    return load_model("tiny")


@pytest.fixture(scope="session")
def blocks_perturbed(original):
    model = load_model("tiny")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("model.layers."):
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="session")
def ga_unlearned_dir(tmp_path_factory, synthetic_items):
    model = load_model("tiny")
    forget = [it for it in synthetic_items if it.split == "forget"]
    enc = [encode_item(model, it) for it in forget]
    batch = right_pad_teacher_forced(
        [e.prompt.ids for e in enc], [e.answer_ids for e in enc], model.pad_token_id, list(range(len(enc)))
    )
    opt = torch.optim.Adam(model.hf.parameters(), lr=3e-4)  # Adam: the tiny model is saturated (p~0.996)
    for _ in range(6):
        logits = model.forward(batch.input_ids, logits_to_keep=batch.keep).logits
        loss = masked_mean(token_logprobs(logits, batch.targets), batch.answer_mask).mean()  # ascend NLL = descend LP
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = tmp_path_factory.mktemp("unl") / "ga"
    model.lineage = model.lineage + [{"role": "unlearned", "method": "test-ga"}]
    model.save(out)
    return out


@pytest.fixture(scope="session")
def ga_unlearned(ga_unlearned_dir):
    return load_model(ga_unlearned_dir)


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """ONE ``unpact demo --model tiny`` run (ga_gdr + npo_gdr, 200 bootstrap resamples), shared read-only by the demo,
    golden-pin and experiment tests (each would otherwise spend ~15 s on the same run). Its ``--out`` lies under two
    directories that do not exist yet: the demo creates them (tests/unit/test_api_guidance.py checks)."""
    from unpact_mech.demo import DemoConfig, run_demo

    out = tmp_path_factory.mktemp("tiny_demo") / "not" / "yet" / "run"
    return run_demo(DemoConfig(model="tiny", methods=("ga_gdr", "npo_gdr")), out, progress=False, log=lambda _: None)
