"""Attribution benchmarks on SmolLM2-135M (``make bench``). Every number is a ratio against a reference timed
in the same run (interleaved rounds); no timed assertions.

* occlusion over the built-in set (``occlusion_items``: many items per forward after the cached prompt prefix; our
  default deletion) vs captum 0.9's ``LLMAttribution(FeatureAblation)`` item by item, per item, on a spread sample of
  the built-in set (every 8th item whose question tokens captum can select): the same prompts, the same features
  (the question tokens) and the same model object, ``use_cached_outputs=False`` (captum's cached path gives wrong
  scores for multi-token answers under transformers 5.x) — goal >= 10x faster (ratio <= 0.1). Cross-checks first:
  captum and ours compute the same thing when configured alike (replacement by token 0, summed log-prob), and the
  set-level scores equal the item-by-item ones to 1e-4. The same on one item ("What is the capital of France?")
  is reported too;
* occlusion vs the floor: ONE right-padded batched forward of the n+1 variants (logits only where needed, no
  scoring) — goal <= 1.3x;
* integrated gradients vs captum ``LayerIntegratedGradients`` on the embedding layer, same baseline (pad-token
  embedding at the question positions), same rule (Gauss-Legendre) and steps (50), all steps in one batch —
  goal >= 3x faster (ratio <= 0.33); attributions cross-checked;
* peak memory of attention-path + residual attribution on a 32-token prompt, in a fresh process: model + <= 1.5 GB.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from unpact_mech.attribution import integrated_gradients, occlusion
from unpact_mech.attribution.occlusion_set import occlusion_items
from unpact_mech.attribution.packing import variant_prompts
from unpact_mech.attribution.units import prompt_units
from unpact_mech.scoring.batching import right_pad_teacher_forced
from unpact_mech.scoring.tokens import encode_item

pytestmark = pytest.mark.benchmark
CAPTUM_MISSING = "captum is not installed (pip install --no-deps captum==0.9.0; pinned in requirements-dev.txt)"


@pytest.fixture(scope="module")
def captum_attr():
    return pytest.importorskip("captum.attr", reason=CAPTUM_MISSING)


@pytest.fixture(scope="module")
def item(real_facts):
    return real_facts[0]  # What is the capital of France? -> Paris (37 prompt tokens, 7 of them the question)


def _captum_feature_ablation(captum_attr, model, enc):
    """captum's LLMAttribution(FeatureAblation) over the question tokens of our exact prompt (None when captum's
    ``skip_tokens``, which selects by token id, cannot single out the question tokens of this prompt)."""
    tok = model.tokenizer
    q = set(enc.prompt.question_positions)
    skip = sorted({enc.prompt.ids[p] for p in range(len(enc.prompt.ids)) if p not in q})
    if any(enc.prompt.ids[p] in skip for p in q):
        return None
    inp = captum_attr.TextTokenInput(enc.prompt.text, tok, baselines=0, skip_tokens=skip)
    assert inp.inp_tensor[0].tolist() == list(enc.prompt.ids) and inp.n_itp_features == len(q)
    attr = captum_attr.LLMAttribution(captum_attr.FeatureAblation(model.hf), tok)
    target = torch.tensor(list(enc.answer_ids))

    def run():
        with torch.no_grad():
            return attr.attribute(inp, target=target, use_cached_outputs=False).seq_attr

    return run


def test_occlusion_over_the_set_vs_captum_feature_ablation(benchmark, compare, captum_attr, smollm2, real_facts):
    runs, items = [], []
    for item in real_facts[::8]:
        run = _captum_feature_ablation(captum_attr, smollm2, encode_item(smollm2, item))
        if run is not None:
            runs.append(run)
            items.append(item)
    assert len(items) >= 16, len(items)
    # the same computation when configured alike: replacement by id 0, summed (not mean) answer log-prob
    alike = occlusion_items(smollm2, items, mode="replace", baseline_token=0)
    for run, item, res in zip(runs, items, alike):
        n_answer = len(encode_item(smollm2, item).answer_ids)
        assert (run().flatten() - res.scores * n_answer).abs().max().item() < 1e-3, item.id
    ours = occlusion_items(smollm2, items)  # the default: deletion
    for item, res in zip(items, ours):
        assert (res.scores - occlusion(smollm2, item).scores).abs().max().item() < 1e-4, item.id
    n_answer = [len(encode_item(smollm2, it).answer_ids) for it in items]
    ratio = compare(
        benchmark,
        f"occlusion of {len(items)} items (ours, set) vs captum FeatureAblation",
        lambda: occlusion_items(smollm2, items),
        lambda: [run() for run in runs],
        rounds=2,
        goal="goal <= 0.1 (>= 10x faster)",
        key="occlusion_vs_captum_feature_ablation",
    )
    per_item = benchmark.extra_info["candidate_median_s"] / len(items)
    benchmark.extra_info.update(n_items=len(items), ours_per_item_s=per_item, answer_tokens=n_answer)
    print(
        f"\nocclusion over {len(items)} built-in items (answers of {min(n_answer)}-{max(n_answer)} tokens): "
        f"{per_item * 1e3:.0f} ms per item, {1 / ratio:.1f}x faster than captum FeatureAblation"
    )


def test_occlusion_of_one_item_vs_captum_feature_ablation(benchmark, compare, captum_attr, smollm2, item):
    enc = encode_item(smollm2, item)
    captum_run = _captum_feature_ablation(captum_attr, smollm2, enc)
    ours_like = occlusion(smollm2, item, mode="replace", baseline_token=0).scores * len(enc.answer_ids)
    assert (captum_run().flatten() - ours_like).abs().max().item() < 1e-3

    def ours():
        return occlusion(smollm2, item)  # the default: deletion, batching="auto" (packed on SmolLM2)

    ratio = compare(
        benchmark,
        "occlusion of one item (ours) vs captum LLMAttribution(FeatureAblation)",
        ours,
        captum_run,
        rounds=3,
        key="occlusion_one_item_vs_captum_feature_ablation",
    )
    print(f"\nocclusion of one item: {1 / ratio:.1f}x faster than captum FeatureAblation")


def test_occlusion_vs_one_batched_forward(benchmark, compare, smollm2, item):
    enc = encode_item(smollm2, item)
    units = [u.positions for u in prompt_units(enc.prompt, "token")]
    variants = variant_prompts(enc.prompt.ids, units, "delete")
    tf = right_pad_teacher_forced(
        variants, [enc.answer_ids] * len(variants), smollm2.pad_token_id, list(range(len(variants)))
    )

    def floor():
        with torch.no_grad():
            return smollm2.forward(tf.input_ids, logits_to_keep=tf.keep).logits

    def ours():
        return occlusion(smollm2, item)

    compare(
        benchmark,
        "occlusion (ours) vs one batched forward of the n+1 variants",
        ours,
        floor,
        rounds=5,
        goal="goal <= 1.3x",
    )


def test_integrated_gradients_vs_captum_layer_ig(benchmark, compare, captum_attr, smollm2, item):
    enc = encode_item(smollm2, item)
    ids = torch.tensor([list(enc.prompt.ids) + list(enc.answer_ids)])
    q = enc.prompt.question_positions
    baseline_ids = ids.clone()
    baseline_ids[0, q] = smollm2.pad_token_id
    p, answer = len(enc.prompt.ids), torch.tensor(list(enc.answer_ids))

    def lp(input_ids):  # the paper's LP per row
        logits = smollm2.hf(input_ids=input_ids, logits_to_keep=len(answer) + 1).logits[:, :-1]
        return torch.log_softmax(logits.float(), -1)[:, torch.arange(len(answer)), answer].mean(-1)

    assert p == ids.shape[1] - len(answer)
    lig = captum_attr.LayerIntegratedGradients(lp, smollm2.hf.get_input_embeddings())

    def captum_run():
        return lig.attribute(ids, baselines=baseline_ids, n_steps=50, method="gausslegendre").sum(-1)[0]

    def ours():
        return integrated_gradients(smollm2, item, steps=50, baseline=smollm2.pad_token_id)

    res = ours()
    ref = captum_run()
    assert (ref[q] - res.scores).abs().max().item() < 2e-3 * max(1.0, ref[q].abs().max().item())
    ratio = compare(
        benchmark,
        "integrated gradients, 50 steps (ours) vs captum LayerIntegratedGradients",
        ours,
        captum_run,
        rounds=3,
        goal="goal <= 0.33 (>= 3x faster)",
        key="ig_vs_captum_layer_ig",
    )
    print(
        f"\nIG: {1 / ratio:.1f}x faster than captum LayerIntegratedGradients; "
        f"completeness_rel {res.details['completeness_rel']:.4f}"
    )


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import gc, json, sys, threading, time, torch
    torch.set_num_threads(2)
    from unpact_mech import load_model
    from unpact_mech.data.record import QAItem
    from unpact_mech.scoring.prompt import PromptFormat
    from unpact_mech.scoring.tokens import encode_item
    from unpact_mech.attribution import attention_paths, residual_contributions

    def rss():
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * 4096

    model = load_model("smollm2")
    model.prompt_format = PromptFormat("plain")
    words = ("Which city on the river Seine , known for the Eiffel Tower and the Louvre museum and its many cafes "
             "and bridges , is the capital of the country France in Europe today ?").split()
    n = 1
    while len(encode_item(model, QAItem("q", " ".join(words[:n]), "Paris")).prompt.ids) < 32:
        n += 1
    item = QAItem("q", " ".join(words[:n]), "Paris")
    enc = encode_item(model, item)
    with torch.no_grad():
        model.forward(torch.tensor([list(enc.prompt.ids) + list(enc.answer_ids)]))  # warm-up: steady state
    gc.collect()
    base = rss()
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.002)

    t = threading.Thread(target=sample)
    t.start()
    for _ in range(2):
        attention_paths(model, item)
        residual_contributions(model, item)
    stop.set()
    t.join()
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"prompt_tokens": len(enc.prompt.ids), "params_bytes": params, "rss_before": base,
                      "rss_peak": peak[0]}))
    """
)


def test_peak_memory_of_attention_and_residual_attribution(benchmark):
    def measure():
        out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT], capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    m = benchmark.pedantic(measure, rounds=1, iterations=1)
    extra = (m["rss_peak"] - m["rss_before"]) / 2**30
    benchmark.extra_info.update(m | {"attribution_extra_gib": extra})
    print(
        f"\nattention+residual attribution, {m['prompt_tokens']}-token prompt: "
        f"model {m['params_bytes'] / 2**30:.2f} GiB "
        f"(process {m['rss_before'] / 2**30:.2f} GiB after load) + peak extra {extra * 1024:.0f} MiB"
    )
    assert m["prompt_tokens"] == 32
    assert extra <= 1.5
