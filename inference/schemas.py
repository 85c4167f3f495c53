"""Answer schemas of the built-in LLM tasks: every answer is validated against one.

`SCHEMAS` maps a task's `schema_name` to its frozen pydantic model; unknown keys are refused.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Answer(BaseModel):
    """Base of every answer schema: frozen, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ChatReply(Answer):
    """Intent of a chat message and a draft reply."""

    intent: Literal["question", "complaint", "request", "feedback", "greeting", "other"]
    reply: str = Field(min_length=1, max_length=4000)
    needs_human: bool


class AnomalyExplanation(Answer):
    """Plain-language explanation of an anomaly alert."""

    summary: str = Field(min_length=1, max_length=2000)
    likely_cause: str = Field(min_length=1, max_length=2000)
    severity: Literal["low", "medium", "high", "critical"]


class ConversationSummary(Answer):
    """The running summary of a conversation's older turns (both sides)."""

    summary: str = Field(min_length=1, max_length=4000)


SCHEMAS: dict[str, type[Answer]] = {
    "chat_reply": ChatReply,
    "anomaly_explanation": AnomalyExplanation,
    "conversation_summary": ConversationSummary,
}
