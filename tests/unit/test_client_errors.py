"""Unit tests of `inference.client.context_exceeded`: the 400s for a prompt over the context.

The error objects are the `openai` client's own, built from the bodies llama-server and
OpenAI send (as the client parses them: `body` is the inner `error` object).
"""

from __future__ import annotations

from typing import Any

import httpx2
import openai
import pytest

from inference.client import context_exceeded

URL = "http://127.0.0.1:1/v1/chat/completions"


def status_error(status: int, body: Any, message: str = "refused") -> openai.APIStatusError:
    response = httpx2.Response(status, request=httpx2.Request("POST", URL))
    cls = openai.BadRequestError if status == 400 else openai.APIStatusError
    return cls(message, response=response, body=body)


LLAMA = {
    "code": 400,
    "message": "request (831 tokens) exceeds the available context size (512 tokens)",
    "type": "exceed_context_size_error",
    "n_prompt_tokens": 831,
    "n_ctx": 512,
}
OPENAI = {
    "message": "This model's maximum context length is 8192 tokens.",
    "type": "invalid_request_error",
    "param": "messages",
    "code": "context_length_exceeded",
}


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (LLAMA, "exceed_context_size_error"),
        (OPENAI, "context_length_exceeded"),
        ({"error": OPENAI}, "context_length_exceeded"),
        (None, None),
        ({"type": "invalid_request_error", "code": None, "message": "bad schema"}, None),
    ],
)
def test_context_exceeded_reads_llama_and_openai_bodies(body: Any, kind: str | None) -> None:
    assert context_exceeded(status_error(400, body)) == kind


def test_context_exceeded_falls_back_to_the_message() -> None:
    err = status_error(400, "plain text", message="Error: exceed_context_size_error")
    assert context_exceeded(err) == "exceed_context_size_error"


def test_only_a_400_is_a_context_refusal() -> None:
    assert context_exceeded(status_error(500, LLAMA)) is None
