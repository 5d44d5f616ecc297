"""One unlearning step vs a plain HF training step on the same batch (SmolLM2, 2x32 tokens) — goal <= 1.15x.

* candidate: one optimizer step of the unlearning loop (``Trainer.step``: method ``ga`` on the HookedLM through the
  TransformerLens backend — forward with ``logits_to_keep`` over the answer span, loss, finiteness check, backward,
  gradient clipping at 1.0, AdamW, lr schedule);
* reference: ``hf(input_ids, labels=...)`` on a plain ``AutoModelForCausalLM`` (HF default attention), backward of
  the negated loss, AdamW step, ``zero_grad`` — no clipping.

Both train all parameters on the same 2 rows of 32 tokens (28 prompt + 4 answer tokens), with persistent
optimizers (AdamW state allocated in the warm-up round). Their own copies of SmolLM2 are loaded here: the
session's shared model is not modified.
"""

from __future__ import annotations

import pytest
import torch

from unpact_mech import load_model
from unpact_mech.scoring.tokens import EncodedPrompt
from unpact_mech.unlearning import TrainConfig, Trainer, get_unlearning_method
from unpact_mech.unlearning.batches import UnlearningSet
from unpact_mech.unlearning.params import select_trainable
from unpact_mech.unlearning.targets import TrainTarget

pytestmark = pytest.mark.benchmark
PROMPT, ANSWER = 28, 4


def _targets(ids: torch.Tensor) -> tuple[TrainTarget, ...]:
    out = []
    for row in ids.tolist():
        prompt = EncodedPrompt("", tuple(row[:PROMPT]), ((0, 0),) * PROMPT, 0, 0)
        out.append(TrainTarget(f"r{len(out)}", prompt, (), tuple(row[PROMPT:]), "gold"))
    return tuple(out)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_unlearning_step_vs_plain_hf_step(benchmark, compare, attention):
    """``sdpa``: HF's default attention (the issue's reference); ``eager``: the attention the hooked model runs (the
    backends need it for ``attn.hook_pattern``) — separates the cost of eager attention from the loop's own."""
    from transformers import AutoModelForCausalLM

    ids = torch.randint(100, 40000, (2, PROMPT + ANSWER), generator=torch.Generator().manual_seed(0))
    model = load_model("smollm2")
    data = UnlearningSet((), (), _targets(ids), ())
    method = get_unlearning_method("ga")
    trainer = Trainer(
        model,
        method,
        data,
        TrainConfig(steps=10**6, lr=1e-7, batch_size=2),
        trainable=select_trainable(model, None),
        progress=False,
    )

    plain = AutoModelForCausalLM.from_pretrained(model.source_dir, dtype=torch.float32, attn_implementation=attention)
    plain.eval()
    labels = ids.clone()
    labels[:, :PROMPT] = -100
    optim = torch.optim.AdamW(plain.parameters(), lr=1e-7, weight_decay=0.0)

    def plain_step():
        loss = -plain(input_ids=ids, labels=labels).loss
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)

    with trainer.session() as session:
        batch = trainer.batch(0, 0)
        assert sorted(batch.tf.input_ids.tolist()) == sorted(ids.tolist())  # the same rows, no padding
        counter = iter(range(10**6))
        ratio = compare(
            benchmark,
            f"unlearning step (ga, 2x32) vs plain HF ({attention}) fwd+bwd+AdamW",
            lambda: trainer.step(next(counter), session),
            plain_step,
            rounds=5,
            goal="goal <= 1.15x",
        )
    print(f"\nunlearning step / plain HF ({attention}) step = {ratio:.3f}")
