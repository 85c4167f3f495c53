"""OpenAI-compatible LLM simulator for tests and the local demo (see :mod:`llmsim.server`)."""

from llmsim.server import LLMSimulator, SimConfig

__all__ = ["LLMSimulator", "SimConfig"]
