"""The ``tiny`` model spec: a 2-layer Llama trained in-process on the built-in synthetic facts.

Deterministic (fixed seed, fixed data order), built once into the cache in a few seconds on 2 CPU cores, and
small enough for millisecond unit tests. Training: a byte-level BPE tokenizer is trained on the fact texts; the
model learns ``prompt -> answer <eos>`` under the toolkit's plain prompt format (loss on answer tokens only) with
full-batch AdamW for a FIXED number of steps, then must answer every fact greedily (else the build fails). A fixed
length (not "stop at the first check that passes") and float64 arithmetic (the weights are saved in float32) keep
the weights bit-for-bit the same on every CPU and thread count: in float32, AdamW amplified the rounding differences
of 2 vs 3 threads to 0.3% of a weight within 75 steps, enough to change which facts a later unlearning run forgets.
"""

from __future__ import annotations

from pathlib import Path

from unpact_mech.models.cache import build_cached

CACHE_NAME = "tiny-llama-v3-f64"
TINY_LLAMA = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)
SPECIAL_TOKENS = ("<bos>", "<eos>", "<pad>")


def train_bpe_tokenizer(texts: list[str], directory: Path, vocab_size: int = 400):
    """Train a byte-level BPE tokenizer on ``texts`` and save/reload it from ``directory`` (reload gives the
    tokenizer a ``name_or_path``, which the TransformerLens bridge needs)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    fast.save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


def _build(out: Path, *, seed: int = 0, steps: int = 100, lr: float = 3e-3) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from unpact_mech.data.synthetic import synthetic_records
    from unpact_mech.scoring.prompt import PLAIN_TEMPLATE, PromptFormat
    from unpact_mech.scoring.tokens import encode_answer, encode_prompt

    records = synthetic_records()
    fmt = PromptFormat("plain")
    corpus = [PLAIN_TEMPLATE.format(question=r["question"]) + fmt.answer_text(r["answer"]) for r in records]
    tokenizer = train_bpe_tokenizer(corpus * 4, out)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TINY_LLAMA,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).double()
    prompts = [list(encode_prompt(tokenizer, fmt, r["question"]).ids) for r in records]
    answers = [list(encode_answer(tokenizer, fmt, r["answer"])) + [tokenizer.eos_token_id] for r in records]
    width = max(len(p) + len(a) for p, a in zip(prompts, answers))
    ids = torch.full((len(records), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    for row, (p, a) in enumerate(zip(prompts, answers)):
        ids[row, : len(p) + len(a)] = torch.tensor(p + a)
        labels[row, len(p) : len(p) + len(a)] = torch.tensor(a)
    optim = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)

    def answers_all() -> bool:
        model.eval()
        with torch.no_grad():
            for p, a in zip(prompts, answers):
                seq = torch.tensor([p])
                for target in a:
                    nxt = int(model(input_ids=seq).logits[0, -1].argmax())
                    if nxt != target:
                        return False
                    seq = torch.cat([seq, torch.tensor([[nxt]])], dim=1)
        return True

    for _ in range(steps):
        model.train()
        loss = model(input_ids=ids, labels=labels).loss
        optim.zero_grad()
        loss.backward()
        optim.step()
    model.float()  # what is saved and used; the greedy check runs on it
    if not answers_all():
        raise RuntimeError("tiny model did not learn the synthetic facts")
    model.config.unpact_training = {"seed": seed, "steps": steps, "final_loss": loss.item()}
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def ensure_tiny() -> Path:
    """Path of the cached tiny model, training it (seconds) on first use."""
    return build_cached(CACHE_NAME, _build)
