"""Chat templates: the LLM's prompt format, rendered as transformers' `apply_chat_template` does.

A checkpoint's Jinja2 template (`ChatTemplate`, with the special tokens it may print) is rendered in a
sandboxed environment with trim_blocks, lstrip_blocks, `raise_exception`, `tojson` and `strftime_now`;
the loaders (export/toolchain/checkpoints/) find the template, the orchestrator renders it. Torch-free.
Encode the rendered prompt with `add_special_tokens=False`: templates that want a BOS write it themselves.
"""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache


class ChatTemplateError(ValueError):
    """No template, or one that is not valid Jinja2 or refuses the messages (the message says why)."""


class ChatTemplate(str):
    """A Jinja2 chat template (a plain str) that also carries the special tokens it may print."""

    tokens: dict[str, str]

    def __new__(cls, template: str, tokens: dict[str, str] | None = None):
        obj = super().__new__(cls, template)
        obj.tokens = dict(tokens or {})
        return obj


@lru_cache(maxsize=16)
def _compile(template: str):
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(Extension):
        """transformers' `{% generation %}...{% endgeneration %}` (marks assistant text): rendered as is."""
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body).set_lineno(lineno)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationBlock, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"chat template is not valid Jinja2 (line {e.lineno}: {e.message})") from e


def render_chat(template: str, messages: list[dict], add_generation_prompt: bool = True, **context) -> str:
    """Render `messages` ([{"role": ..., "content": ...}, ...]) with a checkpoint's chat template.

    context: extra template variables (tools=..., bos_token=..., enable_thinking=...); the
    special tokens a `ChatTemplate` carries are passed by default.
    """
    if not isinstance(template, str):
        raise ChatTemplateError("no chat template: this checkpoint has none (a base model, not an instruct one?); "
                              "format the prompt yourself or pass a template string")
    variables = {**getattr(template, "tokens", {}), **context}
    return _compile(str(template)).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                          **variables)
