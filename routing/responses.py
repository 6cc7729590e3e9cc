"""OpenAI's Responses API over chat completions: what the gateway bridges, and how.

A model whose upstream speaks the Responses API (its catalog entry lists `responses`) gets
the call as is. For the others (most OpenAI-compatible gateways to Chinese models speak
only chat completions) the request is translated to chat (`to_chat`: instructions, input
items, text and image content, function tools and their outputs, `max_output_tokens`,
`text.format`) and the answer back into a Response object (`from_chat`), its usage the
tokens the call was billed. Either way the call is reserved, limited and billed from the chat request it is
equivalent to (`to_chat`), so both are metered exactly like chat.

What cannot be bridged is refused with a 400 before any upstream is called: built-in tools
(web search, file search, code interpreter, computer use, image generation, MCP), whose
charges are not tokens and would escape the ledger, and `previous_response_id`, which needs
responses the gateway does not store.
"""

import json
import secrets
import time

from routing.errors import ProxyError
from usage.pricing import Tokens

BUILT_IN_TOOLS = {
    "web_search",
    "web_search_preview",
    "file_search",
    "code_interpreter",
    "computer_use_preview",
    "image_generation",
    "mcp",
    "local_shell",
}


def _bad(message: str, param: str | None = None, code: str = "invalid_value") -> ProxyError:
    return ProxyError(400, message, param=param, code=code)


# What only an upstream that speaks the Responses API can read: files, audio, and images by
# file id. Bridged, they become empty text, and the loss is the bridged call's 400.
LOST = {"type": "text", "text": ""}


def _check_media(part: dict, where: str) -> None:
    """An image or file part names what it carries, in a field of the right type."""
    kind = part.get("type")
    if kind == "input_image":
        detail = part.get("detail", "auto")
        if detail not in ("auto", "low", "high"):
            raise _bad(f"'{where}.detail' must be auto, low or high.", f"{where}.detail")
        sources = ("image_url", "file_id")
    elif kind == "input_file":
        sources = ("file_id", "file_data", "file_url")
    else:
        return
    given = [name for name in sources if part.get(name) is not None]
    if not given or any(not isinstance(part[name], str) for name in given):
        raise _bad(
            f"'{where}' must carry its content as a string in one of {', '.join(sources)}.",
            where,
            "invalid_type",
        )


def _text_part(part: dict, where: str, losses: list[ProxyError]) -> dict:
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
        return {"type": "text", "text": part["text"]}
    _check_media(part, where)
    if kind == "input_image":
        detail = part.get("detail", "auto")
        url = part.get("image_url")
        if not isinstance(url, str):
            losses.append(
                _bad(
                    f"'{where}': an input_image reaches a chat-only upstream by its image_url "
                    "only (a file_id needs a model served natively on /v1/responses).",
                    param=where,
                )
            )
            return LOST
        return {"type": "image_url", "image_url": {"url": url, "detail": detail}}
    if kind == "refusal" and isinstance(part.get("refusal"), str):
        return {"type": "text", "text": part["refusal"]}
    if kind in ("input_file", "input_audio"):
        losses.append(
            _bad(
                f"'{where}' is an {kind} part, which a chat-only upstream cannot read: send it "
                "to a model served natively on /v1/responses.",
                where,
            )
        )
        return LOST
    raise _bad(f"'{where}' is a content part of type {kind!r}, which cannot be bridged.", where)


def _content(content: object, where: str, losses: list[ProxyError]) -> str | list[dict]:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        parts = [_text_part(p, f"{where}[{i}]", losses) for i, p in enumerate(content)]
        if all(p["type"] == "text" for p in parts):
            return "".join(p["text"] for p in parts)
        return parts
    raise _bad(f"'{where}' must be a string or an array of content parts.", where, "invalid_type")


def _tool_output(output: object, where: str, losses: list[ProxyError]) -> str:
    """A function's output as a chat tool message takes it: text. An output of parts is
    bridged when every part is text (an image or a file there has no chat form)."""
    if isinstance(output, str):
        return output
    if isinstance(output, list) and all(isinstance(p, dict) for p in output):
        if all(p.get("type") == "input_text" and isinstance(p.get("text"), str) for p in output):
            return "".join(p["text"] for p in output)
        if all(p.get("type") in ("input_text", "input_image", "input_file") for p in output):
            for index, part in enumerate(output):
                _check_media(part, f"{where}[{index}]")
            losses.append(
                _bad(
                    f"'{where}' must be text (a string, or input_text parts) for a chat-only "
                    "upstream: images and files in a tool's output need a model served "
                    "natively on /v1/responses.",
                    where,
                    "invalid_type",
                )
            )
            return ""
    raise _bad(
        f"'{where}' must be a string or an array of input_text, input_image or input_file parts.",
        where,
        "invalid_type",
    )


def _messages(body: dict, losses: list[ProxyError]) -> list[dict]:
    messages: list[dict] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    items = body["input"]
    if isinstance(items, str):
        return [*messages, {"role": "user", "content": items}]
    for index, item in enumerate(items):
        where = f"input[{index}]"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise _bad(f"'{where}.role' must be user, assistant, system or developer.", where)
            role = "system" if role == "developer" else role
            messages.append({"role": role, "content": _content(item.get("content"), where, losses)})
        elif kind == "function_call":
            if not isinstance(item.get("call_id"), str) or not isinstance(item.get("name"), str):
                raise _bad(f"'{where}' must carry its call_id and name.", where, "invalid_type")
            if not isinstance(item.get("arguments", ""), str):
                raise _bad(
                    f"'{where}.arguments' must be a string (the arguments as JSON text).",
                    f"{where}.arguments",
                    "invalid_type",
                )
            call = {
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments", "")},
            }
            last = messages[-1] if messages else None
            if last and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)  # parallel calls: one assistant turn
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise _bad(f"'{where}' must carry its call_id.", f"{where}.call_id", "invalid_type")
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": item.get("call_id"),
                    "content": _tool_output(item.get("output"), f"{where}.output", losses),
                }
            )
        elif kind == "reasoning":
            continue  # the model's own earlier reasoning: nothing a chat upstream reads
        else:
            raise _bad(f"'{where}' is an input item of type {kind!r}, which cannot be bridged.")
    if not messages:
        raise _bad("'input' holds nothing for the model to answer (only reasoning items).", "input")
    return messages


def _tools(tools: list) -> list[dict]:
    bridged = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise _bad(f"'tools[{index}]' must be an object.", f"tools[{index}]", "invalid_type")
        if tool.get("type") != "function":
            raise _bad(
                f"'tools[{index}]' is the built-in tool {tool.get('type')!r}: its charges are not "
                "tokens, so this gateway cannot bill them. Only function tools are served.",
                f"tools[{index}]",
                "unsupported_tool",
            )
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise _bad(
                f"'tools[{index}].name' must be the function's name.",
                f"tools[{index}].name",
                "invalid_type",
            )
        if tool.get("parameters") is not None and not isinstance(tool["parameters"], dict):
            raise _bad(
                f"'tools[{index}].parameters' must be a JSON schema object.",
                f"tools[{index}].parameters",
                "invalid_type",
            )
        function = {"name": tool["name"], "parameters": tool.get("parameters") or {}}
        for name in ("description", "strict"):
            if tool.get(name) is not None:
                function[name] = tool[name]
        bridged.append({"type": "function", "function": function})
    return bridged


def to_chat(body: dict) -> tuple[dict, ProxyError | None]:
    """The chat completions request equivalent to a Responses request (ProxyError 400 when
    the request is invalid), and why a chat-only upstream cannot serve it, if it cannot
    (parts only the Responses API reads, left out of the chat request). Its messages, tools
    and output limit are what the call is reserved and limited on, whichever API serves it."""
    if body.get("previous_response_id"):
        raise _bad(
            "'previous_response_id' needs responses stored by the server, and this gateway "
            "stores none: send the conversation's items in 'input' instead.",
            "previous_response_id",
            "unsupported_parameter",
        )
    # What makes the upstream read or produce more than the request carries, where the
    # gateway could not bound or meter it: refused, as previous_response_id is.
    for name, why in (
        ("conversation", "a conversation stored by the provider is read but not in the request"),
        ("prompt", "a stored prompt template is read but not in the request"),
        ("background", "a background response is produced after this call has been billed"),
    ):
        if body.get(name):
            raise _bad(
                f"'{name}' is not served by this gateway: {why}, so it could not be billed. "
                "Send the content in 'input' and 'instructions' instead.",
                name,
                "unsupported_parameter",
            )
    losses: list[ProxyError] = []
    chat: dict = {"model": body["model"], "messages": _messages(body, losses)}
    if body.get("tools"):
        chat["tools"] = _tools(body["tools"])
    choice = body.get("tool_choice")
    if choice in ("auto", "none", "required"):
        chat["tool_choice"] = choice
    elif isinstance(choice, dict) and choice.get("type") == "function":
        if not isinstance(choice.get("name"), str) or not choice["name"]:
            raise _bad("'tool_choice' of type function needs the function's name.", "tool_choice")
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    elif choice is not None:
        raise _bad(
            "'tool_choice' must be auto, none, required or a function: built-in tools are not "
            "served here.",
            "tool_choice",
        )
    for name, kind, shape in (
        ("parallel_tool_calls", bool, "a boolean"),
        ("metadata", dict, "an object"),
    ):
        if body.get(name) is not None and not isinstance(body[name], kind):
            raise _bad(f"'{name}' must be {shape}.", name, "invalid_type")
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    fmt = _text_format(body.get("text"))
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        chat["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        if not isinstance(fmt.get("schema"), dict) or not isinstance(fmt.get("name"), str):
            raise _bad("'text.format' of type json_schema needs a name and a schema.", "text")
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    for name in ("temperature", "top_p", "parallel_tool_calls", "user", "stream"):
        if body.get(name) is not None:
            chat[name] = body[name]
    return chat, (losses[0] if losses else None)


def _text_format(text: object) -> dict | None:
    """`text.format`, checked: an object of type text, json_object or json_schema."""
    if text is None:
        return None
    if not isinstance(text, dict):
        raise _bad("'text' must be an object.", "text", "invalid_type")
    fmt = text.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise _bad(
            "'text.format' must be an object of type text, json_object or json_schema.",
            "text.format",
        )
    return fmt


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def usage_of_tokens(tokens: Tokens | None) -> dict | None:
    """The tokens a call was billed, as a Response's usage: what a bridged Response reports,
    so the client sees the counts on its bill, never an upstream's nonsense."""
    if tokens is None:
        return None
    return {
        "input_tokens": tokens.prompt,
        "input_tokens_details": {"cached_tokens": tokens.cached, "cache_write_tokens": 0},
        "output_tokens": tokens.completion,
        "output_tokens_details": {"reasoning_tokens": tokens.reasoning},
        "total_tokens": tokens.prompt + tokens.completion,
    }


def usage_as_chat(usage: object) -> object:
    """A Response's usage in chat's names, for the meter (routing.tokens.reported_tokens,
    which refuses counts or details of the wrong shape)."""
    if not isinstance(usage, dict):
        return usage
    return {
        "prompt_tokens": usage.get("input_tokens"),
        "completion_tokens": usage.get("output_tokens"),
        "prompt_tokens_details": usage.get("input_tokens_details"),
        "completion_tokens_details": usage.get("output_tokens_details"),
    }


# How a chat answer's finish reason ends a Response: incomplete, and why (else completed).
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def ending(finish_reason: object) -> tuple[str, dict | None]:
    """A Response's status and incomplete_details for a chat answer's finish reason."""
    reason = INCOMPLETE.get(finish_reason) if isinstance(finish_reason, str) else None
    return ("incomplete", {"reason": reason}) if reason else ("completed", None)


def unreadable(what: str) -> ProxyError:
    return ProxyError(
        502,
        f"The upstream sent a chat answer the gateway cannot turn into a Response: {what}.",
        code="upstream_error",
    )


def from_chat(payload: dict, body: dict, model_name: str, usage: dict) -> dict:
    """A Response object from a chat completion answering the bridged request `body`, with
    the usage the call was billed. An answer of another shape raises a 502 (ProxyError)."""
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise unreadable("no choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        raise unreadable("its message is not an object")
    output: list[dict] = []
    text = _answer_text(message.get("content"))
    if text:
        output.append(
            {
                "type": "message",
                "id": _id("msg"),
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        )
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise unreadable("its tool calls are not a list")
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise unreadable("a tool call without a function's name")
        arguments = function.get("arguments")
        output.append(
            {
                "type": "function_call",
                "id": _id("fc"),
                "call_id": call.get("id") if isinstance(call.get("id"), str) else _id("call"),
                "name": function["name"],
                # Some upstreams send the arguments as an object rather than its JSON text.
                "arguments": arguments
                if isinstance(arguments, str)
                else ("" if arguments is None else json.dumps(arguments)),
                "status": "completed",
            }
        )
    status, incomplete = ending(choice.get("finish_reason"))
    return response_object(
        body, model_name, output=output, status=status, usage=usage, incomplete=incomplete
    )


def _answer_text(content: object) -> str:
    """A chat answer's text: a string, or (as some upstreams send it) text parts."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(
        isinstance(part, dict)
        and part.get("type") in ("text", "output_text")
        and isinstance(part.get("text"), str)
        for part in content
    ):
        return "".join(part["text"] for part in content)
    raise unreadable("its content is neither text nor text parts")


def response_object(
    body: dict,
    model_name: str,
    *,
    output: list[dict],
    status: str,
    usage: dict | None,
    incomplete: dict | None = None,
    response_id: str | None = None,
    created_at: int | None = None,
) -> dict:
    return {
        "id": response_id or _id("resp"),
        "object": "response",
        "created_at": created_at or int(time.time()),
        "status": status,
        "error": None,
        "incomplete_details": incomplete,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model_name,
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": body.get("temperature"),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p"),
        "truncation": "disabled",
        "usage": usage,
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def produced_text(payload: dict) -> str:
    """The text a Response holds (output text, refusals, function arguments), for metering
    an answer whose usage is missing or unusable."""
    produced = []
    for item in payload.get("output") or []:
        if not isinstance(item, dict):
            continue
        if isinstance(item.get("arguments"), str):
            produced.append(item["arguments"])
        for part in item.get("content") or []:
            if isinstance(part, dict):
                produced.extend(
                    v for k, v in part.items() if k in ("text", "refusal") and isinstance(v, str)
                )
    return "".join(produced)
