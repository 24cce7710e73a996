"""--chat-template: a chat template for a tokenizer that has none (an encoder such as MiniLM, a base
model) or one to replace, as a built-in name, a Jinja file, or the template's text.

    text = template_text("chatml")            # or "hh", a path to a .jinja file, or the Jinja itself
    tokenizer.chat_template = text

Built-ins:
- `chatml`: `<|im_start|>role\\ncontent<|im_end|>\\n` turns (Qwen, SmolLM; no default system prompt).
- `hh`: the plain transcript of Anthropic's HH-RLHF, `\\n\\nHuman: ...\\n\\nAssistant: ...`, each
  assistant turn ended by the tokenizer's eos token where it has one. Its generation prompt is
  `\\n\\nAssistant:`, so a reply starts with its space, as in the data.

Both render a conversation's prefixes as prefixes of the whole, which assistant-only masking
needs (tokenization.py). train.py saves the flag's value with the run (a file's text, not
its path, so the checkpoint carries it), and the tokenizer of every export holds the template.
"""
from __future__ import annotations

import os

from errors import UserError

BUILTIN = {
    "chatml": (
        "{%- for message in messages -%}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"),
    "hh": (
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'system' -%}{{ message['content'] }}"
        "{%- elif message['role'] == 'user' -%}{{ '\n\nHuman: ' + message['content'] }}"
        "{%- else -%}{{ '\n\nAssistant: ' + message['content'] }}{%- if eos_token -%}{{ eos_token }}{%- endif -%}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '\n\nAssistant:' }}{%- endif -%}"),
}


class ChatTemplateError(UserError, ValueError):
    """--chat-template names no built-in, file or template; the message is one sentence."""


def template_text(spec: str) -> str:
    """A built-in's name, a file holding a Jinja template, or a Jinja template itself -> its text."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    if "{%" in spec or "{{" in spec:
        return spec
    if os.path.isfile(spec):
        with open(spec, encoding="utf-8") as f:
            text = f.read()
        if "{{" not in text and "{%" not in text:
            raise ChatTemplateError(f"--chat-template file {spec} holds no Jinja template (no {{{{ or {{% in it).")
        return text
    raise ChatTemplateError(f"--chat-template {spec!r} is neither a built-in ({', '.join(BUILTIN)}) nor an "
                            f"existing template file.")


def stored(spec: str | None) -> str | None:
    """What a run saves: a built-in's name as it is, a file's text (the path may not exist where the
    checkpoint is loaded later)."""
    if spec is None or spec in BUILTIN:
        return spec
    return template_text(spec)


def apply(tokenizer, spec: str | None):
    """Set the template named by `spec` on `tokenizer` (unchanged when None); returns the tokenizer."""
    if spec is not None:
        tokenizer.chat_template = template_text(spec)
    return tokenizer


HELP = (f"chat template to render conversations with, replacing the tokenizer's: a built-in ({', '.join(BUILTIN)}: "
        f"Human:/Assistant: transcripts), a Jinja file, or the template's text (default: the tokenizer's own; "
        f"for a train.py run, the one it was trained with)")


def add_flag(parser) -> None:
    """The --chat-template flag of the scripts that load a model to render conversations (train.py declares it
    in flags.py with the same help)."""
    parser.add_argument("--chat-template", type=str, default=None, help=HELP)
