"""ir-gateway: an OpenAI-compatible structured-output gateway in front of vLLM."""

__version__ = "0.1.0"
