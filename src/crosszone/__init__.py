"""crosszone: keep an OpenAI/DeepSeek-compatible LLM service up when an availability zone fails."""

__version__ = "0.1.0"
