"""What an OpenAI-style request to `tandem serve` may hold, and the 4xx it gets otherwise.

The request bodies as pydantic models (`ChatRequest`, `CompletionRequest`), `ApiError` (an
error in OpenAI's shape), and the checks a body passes before any model sees it: strict UTF-8
JSON, valid Unicode in every string, the fields the server implements, the server's limits on
`n` and `max_tokens`."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_BODY_BYTES = 1_000_000
# Each choice is a sequence the backend decodes (a local model runs n rows per request, times up
# to max_batch requests), so n multiplies the work a single request can ask for.
MAX_N = 16
MAX_TOKENS = 16_384  # covers clients that ask 16000 for reasoning models (DSPy does)
DEFAULT_MAX_TOKENS = 256

class ChatMessage(BaseModel):
    """One chat message; only `role` and `content` are read."""

    model_config = ConfigDict(extra="allow", strict=True)
    role: str
    content: str


class _Sampling(BaseModel):
    """The fields both endpoints read."""

    model_config = ConfigDict(extra="allow", strict=True)
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1)
    seed: int | None = None
    stop: list[str] | None = None
    stream: bool | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class ChatRequest(_Sampling):
    """The body of /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # newer clients' name for max_tokens
    logprobs: bool | None = None


class CompletionRequest(_Sampling):
    """The body of /v1/completions."""

    prompt: str
    logprobs: int | None = None  # any value, 0 included, asks for log-probabilities


class ApiError(Exception):
    """An error answered to the client in OpenAI's shape."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers

    def response(self) -> Any:
        from fastapi.responses import JSONResponse

        kind = "server_error" if self.status >= 500 else "invalid_request_error"
        return JSONResponse({"error": {"message": self.message, "type": kind, "param": self.param,
                                       "code": self.code}}, status_code=self.status, headers=self.headers)


_EXPECTED = {"missing": "is required", "model_type": "must be an object", "dict_type": "must be an object",
             "too_short": "must be a non-empty list", "list_type": "must be a list",
             "string_type": "must be a string", "int_type": "must be an integer",
             "float_type": "must be a number", "bool_type": "must be true or false"}


def invalid(exc: ValidationError) -> ApiError:
    """The first problem pydantic found, as a 400 naming the field and what it must be."""
    error = exc.errors(include_url=False)[0]
    param = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"])[1:]
    if error["type"] == "missing":
        return ApiError(400, f"'{param}' is required", param)
    bound = {"greater_than_equal": ">=", "less_than_equal": "<="}.get(error["type"])
    expected = (f"must be {bound} {next(iter(error['ctx'].values()))}" if bound
                else _EXPECTED.get(error["type"]) or f"is invalid: {error['msg']}")
    got = json.dumps(error["input"], default=str)
    return ApiError(400, f"'{param}' {expected}, got {got[:80]}{'...' if len(got) > 80 else ''}", param)


def _unicode_error(value: Any) -> ApiError | None:
    """A 400 naming the first string in the decoded body, key or value, that is not valid Unicode.

    JSON's syntax allows a lone surrogate escape ("\\ud800"), which decodes to a Python str that
    no UTF-8 encoder accepts: a tokenizer, an upstream HTTP client or this server's own response
    would fail on it later, as a 500. So it is refused here, for every field alike."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:  # not recursive: a body may nest as deep as the JSON parser allows
        path, item = stack.pop()
        where = f"'{path}'" if path else "the request body"
        texts: list[tuple[str, str]] = []
        if isinstance(item, str):
            texts = [(where, item)]
        elif isinstance(item, dict):
            texts = [(f"a key of {where}", key) for key in item]
            stack.extend((f"{path}.{key}" if path else key, child) for key, child in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", child) for i, child in reversed(list(enumerate(item))))
        for what, text in texts:
            if not _encodable(text):
                return ApiError(400, f"{what} is not valid Unicode text: it holds an unpaired surrogate "
                                     f"({_first_surrogate(text)}); send text that encodes as UTF-8",
                                path or None)
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _first_surrogate(text: str) -> str:
    """Where the first unencodable character is, as ASCII: `\\ud800 at character 3`."""
    i = next(i for i, c in enumerate(text) if "\ud800" <= c <= "\udfff")
    return f"{ascii(text[i])[1:-1]} at character {i}"


def refuse_unsupported(body: ChatRequest | CompletionRequest) -> None:
    if body.stream:
        raise ApiError(400, "streaming is not supported by tandem serve; omit 'stream' or set it "
                            "to false", "stream")
    if body.logprobs is not None and body.logprobs is not False:
        raise ApiError(400, "tandem serve does not return log-probabilities; omit 'logprobs'", "logprobs")


def check_limits(body: ChatRequest | CompletionRequest, max_n: int | None, max_tokens: int | None) -> None:
    """400 for `n` or a token budget over the server's limits (`--max-n`, `--max-tokens`)."""
    asked = [("n", body.n, max_n, "--max-n"), ("max_tokens", body.max_tokens, max_tokens, "--max-tokens"),
             ("max_completion_tokens", getattr(body, "max_completion_tokens", None), max_tokens,
              "--max-tokens")]
    for param, value, limit, option in asked:
        if limit is not None and value is not None and value > limit:
            raise ApiError(400, f"'{param}' must be <= {limit}, got {value}: this server's limit "
                                f"(tandem serve {option})", param)


async def read_json(request: Any, limit: int | None) -> dict[str, Any]:
    """The request body as a JSON object; 413 as soon as it is known to pass `limit` bytes."""
    too_large = ApiError(413, f"the request body is over the server's limit of {limit} bytes; send "
                              f"less, or start the server with a larger --max-body-bytes")
    declared = request.headers.get("content-length", "")
    if limit is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():  # counted as it arrives: chunked bodies have no length
        body += chunk
        if limit is not None and len(body) > limit:
            raise too_large
    try:
        # JSON between systems is UTF-8 (RFC 8259). Decoded here, strictly, because json.loads
        # would guess UTF-16/32 and let UTF-8-encoded surrogates through ('surrogatepass').
        text = bytes(body).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"the request body is not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at "
                            f"position {exc.start}); send JSON encoded as UTF-8") from None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc}); send a JSON object") from None
    if not isinstance(value, dict):
        kind = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}
        raise ApiError(400, f"the request body must be a JSON object, got a JSON "
                            f"{kind.get(type(value), 'null')}")
    error = _unicode_error(value)
    if error is not None:
        raise error
    return value
