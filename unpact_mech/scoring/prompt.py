"""The prompt format — the ONE place where a question becomes model input text.

Two kinds:

* ``chat``: the tokenizer's chat template with one user turn and the generation prompt (the template's default
  system prompt, unless ``system`` is given). Default whenever the tokenizer has a chat template: on SmolLM2 it
  answers about twice as many facts as the plain format, which often emits EOS at once.
* ``plain``: ``"Question: {question}\\nAnswer:"``; the answer follows after ``answer_prefix`` (a space).

BOS is explicit: with ``add_bos=None`` ("auto") the BOS token is prepended exactly when the tokenizer has one and
the rendered text does not already start with it (SmolLM2's template starts with ``<|im_start|>``, its BOS).
``history``: earlier (question, answer) turns before the question — user/assistant turns in ``chat``, filled-in
templates separated by a blank line in ``plain`` — as few-shot prompting uses them. Every prompt is rendered with
the position of the question inside the text, so token/keyword alignment and
"never ablate template tokens" work on any format.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from unpact_mech.errors import InputError

PLAIN_TEMPLATE = "Question: {question}\nAnswer:"
_PLACEHOLDER = "\u2063UNPACT_QUESTION\u2063"
FORMAT_KINDS = ("auto", "chat", "plain")


@dataclass(frozen=True)
class RenderedPrompt:
    """Prompt text, the question's character span in it, and whether a BOS token goes first."""

    text: str
    question_start: int
    question_end: int
    bos: bool


@dataclass(frozen=True)
class PromptFormat:
    kind: str = "chat"
    template: str = PLAIN_TEMPLATE
    system: str | None = None
    answer_prefix: str | None = None
    add_bos: bool | None = None
    history: tuple[tuple[str, str], ...] = ()

    def with_system(self, system: str | None) -> "PromptFormat":
        return replace(self, system=system)

    def with_history(self, history: "tuple[tuple[str, str], ...] | list[tuple[str, str]]") -> "PromptFormat":
        """A copy with ``history``: earlier (question, answer) turns, oldest first."""
        return replace(self, history=tuple((str(q), str(a)) for q, a in history))

    def answer_text(self, answer: str) -> str:
        """The text that follows the prompt when the answer is teacher-forced (``" Paris"`` for plain)."""
        prefix = self.answer_prefix if self.answer_prefix is not None else ("" if self.kind == "chat" else " ")
        return prefix + answer.strip()

    def _wrap(self, tokenizer) -> str:
        if self.kind == "plain":
            if "{question}" not in self.template:
                raise InputError(f"prompt template {self.template!r} has no {{question}} field")
            shots = "".join(
                self.template.replace("{question}", q) + self.answer_text(a) + "\n\n" for q, a in self.history
            )
            return shots + self.template.replace("{question}", _PLACEHOLDER)
        if not getattr(tokenizer, "chat_template", None):
            raise InputError("prompt format 'chat': the tokenizer has no chat template (use --prompt-format plain)")
        messages = [{"role": "system", "content": self.system}] if self.system else []
        for q, a in self.history:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        messages.append({"role": "user", "content": _PLACEHOLDER})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def render(self, tokenizer, question: str) -> RenderedPrompt:
        """Render ``question``; the question's span is located through a placeholder, never by search."""
        wrapped = self._wrap(tokenizer)
        if wrapped.count(_PLACEHOLDER) != 1:
            raise InputError("prompt format: the template must contain the question exactly once")
        start = wrapped.index(_PLACEHOLDER)
        text = wrapped.replace(_PLACEHOLDER, question)
        bos_text = tokenizer.bos_token
        bos = self.add_bos
        if bos is None:
            bos = bos_text is not None and tokenizer.bos_token_id is not None and not text.startswith(bos_text)
        return RenderedPrompt(text, start, start + len(question), bool(bos))


def default_prompt_format(tokenizer) -> PromptFormat:
    """Chat template if the tokenizer has one, else the plain ``Question: …\\nAnswer:`` format."""
    return PromptFormat("chat" if getattr(tokenizer, "chat_template", None) else "plain")


def prompt_format_from_name(name: str, tokenizer, *, system: str | None = None) -> PromptFormat:
    """``auto`` | ``chat`` | ``plain`` -> :class:`PromptFormat` (unknown names raise :class:`InputError`)."""
    if name not in FORMAT_KINDS:
        raise InputError(f"unknown prompt format {name!r}; choose one of: {', '.join(FORMAT_KINDS)}")
    fmt = default_prompt_format(tokenizer) if name == "auto" else PromptFormat(name)
    if fmt.kind == "chat" and not getattr(tokenizer, "chat_template", None):
        raise InputError("prompt format 'chat': the tokenizer has no chat template (use --prompt-format plain)")
    return fmt.with_system(system) if system else fmt
