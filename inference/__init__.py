"""The LLM machinery that needs no Bytewax: client and executor, limits, prompts, schemas."""
