"""Token estimates, for upstreams that send no usage and for budget reservations.

The method, documented once: a text costs ceil(ASCII characters / 4) plus
one token per non-ASCII character (CJK text runs about one token per
character in common BPE vocabularies, English about four characters per
token). Each chat message adds 4 tokens of framing and a prompt adds 3 for
priming the reply, as OpenAI's cookbook counts them; an image part counts
as 85 tokens (a low-detail tile). Rows billed on an estimate are flagged
`tokens_estimated` in the ledger.
"""

import math

from django.conf import settings

MESSAGE_OVERHEAD = 4
REPLY_PRIMING = 3
IMAGE_TOKENS = 85


def text_tokens(text: str) -> int:
    if not text:
        return 0
    ascii_chars = sum(1 for ch in text if ord(ch) < 128)
    return math.ceil(ascii_chars / 4) + (len(text) - ascii_chars)


def _content_tokens(content) -> int:
    if isinstance(content, str):
        return text_tokens(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, dict):
                if part.get("type") == "image_url":
                    total += IMAGE_TOKENS
                else:
                    total += text_tokens(str(part.get("text", "")))
        return total
    return 0


def chat_prompt_tokens(messages: list, tools=None) -> int:
    total = REPLY_PRIMING
    for message in messages:
        if not isinstance(message, dict):
            continue
        total += MESSAGE_OVERHEAD + _content_tokens(message.get("content"))
        for call in message.get("tool_calls") or []:
            total += text_tokens(str(call))
    if tools:
        total += text_tokens(str(tools))
    return total


def embedding_input_tokens(value) -> int:
    """Tokens in an embeddings `input`: text, a list of texts, or token-id arrays."""
    if isinstance(value, str):
        return text_tokens(value)
    if isinstance(value, list):
        if all(isinstance(v, int) for v in value):
            return len(value)
        return sum(embedding_input_tokens(v) for v in value)
    return 0


def output_cap(body: dict, max_output_tokens: int | None) -> int:
    """Output tokens a chat request may produce: its max_tokens, else the model's cap, else
    TOLLGATE_RESERVE_OUTPUT_TOKENS. Used for budget reservations and for cheapest routing."""
    return (body.get("max_completion_tokens") or body.get("max_tokens") or max_output_tokens
            or settings.TOLLGATE_RESERVE_OUTPUT_TOKENS)
