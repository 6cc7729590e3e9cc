"""Token counts of a request: the usual estimate, and the most it can use.

**Estimate** (for upstreams that send no usage, and for `cheapest`
routing): a text costs ceil(ASCII characters / 4) plus one token per
non-ASCII character (CJK text runs about one token per character in common
BPE vocabularies, English about four characters per token). Each chat
message adds 4 tokens of framing and a prompt adds 3 for priming the reply,
as OpenAI's cookbook counts them; an image part counts as 85 tokens (a
low-detail tile). Rows billed on an estimate are flagged `tokens_estimated`.

**Ceiling** (for budget reservations and TPM limits, which must bound the
real cost whatever the request's shape): byte-level BPE tokenizers never
make more tokens than the UTF-8 bytes they read, so every text, tool
definition and inline audio or file counts its byte length; an image counts
by its size whatever its `detail` says (below); a part whose size the
request does not carry (a file by id, media by URL, an unknown kind) may
fill the model's whole context window, which bounds every prompt. Output is
the larger of `max_completion_tokens` and `max_tokens` (else the model's
cap, else TOLLGATE_RESERVE_OUTPUT_TOKENS), never above the model's cap,
times the number of choices asked for (`n`), plus any `prediction` content,
which providers bill as output.
"""

import base64
import binascii
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from routing.selectors import ModelInfo
from usage.pricing import MAX_TOKENS_PER_CALL, Tokens, is_token_count

# A request body as parsed from JSON.
Body = dict[str, Any]

MESSAGE_OVERHEAD = 4
REPLY_PRIMING = 3
IMAGE_TOKENS = 85
# Image ceilings. OpenAI bills a high-detail image 85 + 170 per 512-px tile
# after fitting it in 2048×2048 with its short side at most 768; Anthropic
# bills width × height / 750; Qwen-VL up to 16,384 tokens. An image whose
# size the gateway cannot read (a URL) is reserved at that largest figure.
IMAGE_LOW_DETAIL_TOKENS = 85
IMAGE_UNKNOWN_SIZE_TOKENS = 16_384
# A part whose size the request does not carry (a file by id, audio or video by URL, an
# unknown kind) counts this much, which the model's context window then bounds; a model
# with no known window is bounded at the largest window offered today.
UNSIZED_PART_TOKENS = MAX_TOKENS_PER_CALL
UNKNOWN_CONTEXT_WINDOW = 2_000_000
# What a provider may add to a prompt of its own (a chat template; instructions for
# tool use, which run to a few hundred tokens): reserved on top of what the request
# carries, and believed in usage.
PROVIDER_FRAMING_TOKENS = 64
PROVIDER_TOOL_FRAMING_TOKENS = 512


def text_tokens(text: str) -> int:
    """The usual estimate of a text's tokens."""
    if not text:
        return 0
    ascii_chars = sum(1 for ch in text if ord(ch) < 128)
    return math.ceil(ascii_chars / 4) + (len(text) - ascii_chars)


def _bytes(value: object) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    return len(
        json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode(
            "utf-8", "surrogatepass"
        )
    )


# --- Chat ------------------------------------------------------------------


def _part_estimate(part: object) -> int:
    if isinstance(part, dict):
        if part.get("type") == "image_url":
            return IMAGE_TOKENS
        if isinstance(part.get("text"), str):
            return text_tokens(part["text"])
    return math.ceil(_bytes(part) / 4)


def _part_ceiling(part: object) -> int:
    if isinstance(part, dict):
        kind = part.get("type")
        if kind == "image_url":
            return image_ceiling(part.get("image_url"))
        if kind == "text" and isinstance(part.get("text"), str):
            return _bytes(part["text"])
        inline = part.get(kind) if isinstance(kind, str) else None
        if (
            kind == "input_audio"
            and isinstance(inline, dict)
            and isinstance(inline.get("data"), str)
        ):
            return _bytes(part)
        if (
            kind == "file"
            and isinstance(inline, dict)
            and isinstance(inline.get("file_data"), str)
            and not inline.get("file_id")
        ):
            return _bytes(part)
    # A file by id, media by URL, anything unknown: its size is not in the request, so it
    # may fill the whole context window (TokenBounds.ceiling clamps to it).
    return UNSIZED_PART_TOKENS


def _content_tokens(
    content: object, part_tokens: Callable[[object], int], text_count: Callable[[str], int]
) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return text_count(content)
    if isinstance(content, list):
        return sum(part_tokens(part) for part in content)
    return part_tokens(content)


# Request fields that reach the model's input besides the messages.
_INPUT_FIELDS = ("tools", "functions", "tool_choice", "function_call", "response_format")


def chat_prompt_estimate(body: Body) -> int:
    total = REPLY_PRIMING
    for message in body["messages"]:
        total += MESSAGE_OVERHEAD + _content_tokens(
            message.get("content"), _part_estimate, text_tokens
        )
        for call in message.get("tool_calls") or []:
            total += text_tokens(str(call))
    for name in _INPUT_FIELDS:
        if body.get(name) is not None:
            total += math.ceil(_bytes(body[name]) / 4)
    return total


def chat_prompt_ceiling(body: Body) -> int:
    total = REPLY_PRIMING
    for message in body["messages"]:
        framing = {k: v for k, v in message.items() if k != "content"}
        total += MESSAGE_OVERHEAD + _bytes(framing)
        total += _content_tokens(message.get("content"), _part_ceiling, _bytes)
    for name in _INPUT_FIELDS:
        if body.get(name) is not None:
            total += _bytes(body[name])
    return total


def image_ceiling(image_url: object) -> int:
    """Most tokens one image part can cost, by its detail and, for inline images, its size."""
    # `detail` is not trusted: some providers ignore it and bill by size.
    if not isinstance(image_url, dict):
        image_url = {"url": image_url}
    size = _inline_image_size(image_url.get("url"))
    if size is None:
        return IMAGE_UNKNOWN_SIZE_TOKENS
    width, height = size
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / min(w, h)) if min(w, h) else 1.0
    tiles = math.ceil(w * scale / 512) * math.ceil(h * scale / 512)
    return max(IMAGE_LOW_DETAIL_TOKENS + 170 * tiles, math.ceil(width * height / 750))


def _inline_image_size(url: object) -> tuple[int, int] | None:
    if not isinstance(url, str) or not url.startswith("data:") or "," not in url:
        return None
    from PIL import Image, UnidentifiedImageError

    try:
        data = base64.b64decode(url.split(",", 1)[1], validate=False)
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            width, height = image.size
    except (
        binascii.Error,
        ValueError,
        OSError,
        UnidentifiedImageError,
        Image.DecompressionBombError,
    ):
        return None
    return (width, height) if width > 0 and height > 0 else None


def choices(body: Body) -> int:
    """How many completions the request has made: `n`, or (legacy completions) `best_of`,
    which the upstream generates, and bills, to return the best `n` of; for each prompt of
    a legacy request that sends several."""
    made = [
        v
        for v in (body.get("n"), body.get("best_of"))
        if isinstance(v, int) and not isinstance(v, bool) and v > 0
    ]
    return max(made, default=1) * _prompts(body)


def _prompts(body: Body) -> int:
    # A legacy `prompt` is one text, one list of token ids, or a list of either: one
    # prompt each. A chat request has none.
    prompt = body.get("prompt") if "messages" not in body else None
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        return len(prompt)
    return 1


def _asked_output(body: Body) -> int | None:
    # Upstreams differ in which of the two they honour: the larger one bounds them all.
    asked = [
        v
        for v in (body.get("max_completion_tokens"), body.get("max_tokens"))
        if isinstance(v, int) and not isinstance(v, bool) and v > 0
    ]
    return max(asked) if asked else None


def output_cap(body: Body, model_cap: int | None) -> int:
    """Output tokens one choice may produce: the request's max, else the model's cap, else
    TOLLGATE_RESERVE_OUTPUT_TOKENS; never above the model's cap."""
    cap = _asked_output(body) or model_cap or settings.TOLLGATE_RESERVE_OUTPUT_TOKENS
    return min(cap, model_cap) if model_cap else cap


def output_allowance(body: Body, model: "ModelInfo | None") -> int:
    """The most output an honest upstream can produce for the request, all choices: the
    per-choice cap the gateway reserves for and, when the request names none, sends
    upstream itself (routing.calls.upstream_body)."""
    return output_cap(body, model.max_output_tokens if model else None) * choices(body)


def produced_estimate(body: Body, text: str) -> int:
    """Tokens of output an answer's text holds. A legacy completion with `echo` repeats its
    prompt in the text: what it repeated is read, not produced, and is left out, where the
    text really holds it (an upstream may ignore `echo`; the client cannot switch the count
    off by asking for it)."""
    produced = text_tokens(text)
    prompt = body.get("prompt") if "messages" not in body else None
    if body.get("echo") is not True or prompt is None:
        return produced
    prompts = [prompt] if isinstance(prompt, str) else prompt
    echoed = sum(text.count(p) * text_tokens(p) for p in set(prompts) if isinstance(p, str) and p)
    return max(0, produced - echoed)


def output_unbounded(body: Body) -> bool:
    """The request names no output limit, so the gateway must send one."""
    return _asked_output(body) is None


def _prediction_bytes(body: Body) -> int:
    prediction = body.get("prediction")
    return _bytes(prediction.get("content")) if isinstance(prediction, dict) else 0


# --- Embeddings ----------------------------------------------------------------


def embedding_input_estimate(value: object) -> int:
    """Tokens in an embeddings `input`: text, a list of texts, or token-id arrays."""
    if isinstance(value, str):
        return text_tokens(value)
    if isinstance(value, list):
        if all(isinstance(v, int) for v in value):
            return len(value)
        return sum(embedding_input_estimate(v) for v in value)
    return 0


def embedding_input_ceiling(value: object) -> int:
    if isinstance(value, str):
        return _bytes(value)
    if isinstance(value, list):
        if all(isinstance(v, int) for v in value):
            return len(value)
        return sum(embedding_input_ceiling(v) for v in value)
    return _bytes(value)


# --- A request's bounds ----------------------------------------------------------


@dataclass(frozen=True)
class TokenBounds:
    """A request's token estimate and ceiling, independent of the model but for its output cap."""

    prompt_estimate: int
    prompt_ceiling: int
    # Output ceiling before the model's cap: per choice, how many choices, prediction bytes.
    body: Body
    chat: bool

    @classmethod
    def of_chat(cls, body: Body) -> "TokenBounds":
        return cls(chat_prompt_estimate(body), chat_prompt_ceiling(body), body, True)

    @classmethod
    def of_completions(cls, body: Body) -> "TokenBounds":
        # A legacy prompt takes the shapes of an embeddings input: text, texts, token ids;
        # a suffix is read too.
        value, suffix = body["prompt"], body.get("suffix")
        estimate = embedding_input_estimate(value) + REPLY_PRIMING
        ceiling = embedding_input_ceiling(value)
        if suffix is not None:
            estimate += text_tokens(suffix) if isinstance(suffix, str) else 0
            ceiling += _bytes(suffix)
        return cls(estimate, ceiling, body, True)

    @classmethod
    def of_responses(cls, body: Body, chat: Body) -> "TokenBounds":
        """A Responses request's bounds: those of the chat request it is equivalent to
        (`chat`, its output limit included), its prompt ceiling raised to everything the
        request carries, since an upstream that speaks the Responses API reads all of it
        (reasoning items, tool outputs of parts, fields the bridge has no use for): every
        byte, each image at its ceiling and each file by reference at the window."""
        bounds = cls.of_chat(chat)
        carried = _bytes(body) + _referenced_parts(body)
        return cls(bounds.prompt_estimate, max(bounds.prompt_ceiling, carried), chat, True)

    @classmethod
    def of_moderations(cls, body: Body) -> "TokenBounds":
        # Text, texts, or multimodal parts (text and images), as OpenAI takes them.
        value = body["input"]
        if isinstance(value, list) and any(isinstance(v, dict) for v in value):
            return cls(sum(_part_estimate(v) for v in value), _bytes(value), body, False)
        return cls(embedding_input_estimate(value), embedding_input_ceiling(value), body, False)

    @classmethod
    def of_embeddings(cls, body: Body) -> "TokenBounds":
        value = body["input"]
        return cls(embedding_input_estimate(value), embedding_input_ceiling(value), body, False)

    def output_ceiling(self, model: ModelInfo | None) -> int:
        if not self.chat:
            return 0
        cap = output_cap(self.body, model.max_output_tokens if model else None)
        return cap * choices(self.body) + _prediction_bytes(self.body)

    def ceiling(self, model: ModelInfo | None) -> Tokens:
        """The most tokens this request can use on `model`: no prompt passes the model's
        context window (an upstream refuses it)."""
        window = (model.context_window if model else None) or UNKNOWN_CONTEXT_WINDOW
        framing = PROVIDER_FRAMING_TOKENS
        if self.body.get("tools") or self.body.get("functions"):
            framing += PROVIDER_TOOL_FRAMING_TOKENS
        prompt = min(self.prompt_ceiling + framing, window)
        return _clamped(prompt, self.output_ceiling(model))

    def expected(self, model: ModelInfo | None) -> Tokens:
        output = (
            output_cap(self.body, model.max_output_tokens if model else None) if self.chat else 0
        )
        return _clamped(self.prompt_estimate, output * choices(self.body) if self.chat else 0)


def _referenced_parts(value: object) -> int:
    """Tokens to reserve for the parts of a Responses request whose size it does not carry:
    an image at its ceiling, a file or other media by id or URL at UNSIZED_PART_TOKENS."""
    if isinstance(value, list):
        return sum(_referenced_parts(v) for v in value)
    if not isinstance(value, dict):
        return 0
    kind = value.get("type")
    if kind in ("input_image", "image_url"):
        url = value.get("image_url")
        return image_ceiling(url if isinstance(url, dict) else {"url": url})
    if kind in ("input_file", "input_audio", "input_video") and not value.get("file_data"):
        return UNSIZED_PART_TOKENS
    return sum(_referenced_parts(v) for v in value.values())


def _clamped(prompt: int, completion: int) -> Tokens:
    return Tokens(
        prompt=min(prompt, MAX_TOKENS_PER_CALL), completion=min(completion, MAX_TOKENS_PER_CALL)
    )


# --- What an upstream reported ------------------------------------------------------


def reported_tokens(
    usage: object,
    *,
    max_prompt: int | None = None,
    max_completion: int | None = None,
    min_prompt: int = 0,
    min_completion: int = 0,
    chat: bool = True,
) -> Tokens | None:
    """Tokens from an upstream's OpenAI `usage` object, or None when it sent none or
    nonsense: negative, fractional, string or absurd counts, cached above prompt, a
    chat answer without completion tokens, more than the request could use (`max_*`),
    or far less than it visibly did (`min_*`: an eighth of the gateway's own estimate,
    which no tokenizer undercuts). The caller then counts itself and
    flags the row as estimated. Embeddings produce no output: their completion is 0."""
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens") if chat else 0
    cached = _detail(usage, "prompt_tokens_details", "cached_tokens")
    reasoning = _detail(usage, "completion_tokens_details", "reasoning_tokens") if chat else 0
    if not (
        is_token_count(prompt)
        and is_token_count(completion)
        and is_token_count(cached)
        and is_token_count(reasoning)
    ):
        return None
    if cached > prompt or reasoning > completion:
        return None
    if (max_prompt and prompt > max_prompt) or (max_completion and completion > max_completion):
        return None
    if prompt < min_prompt or completion < min_completion:
        return None
    return Tokens(prompt=prompt, cached=cached, completion=completion, reasoning=reasoning)


def _detail(usage: Body, section: str, name: str) -> object:
    details = usage.get(section)
    if details is None:
        return 0
    if not isinstance(details, dict):
        return None
    value = details.get(name)
    return 0 if value is None else value
