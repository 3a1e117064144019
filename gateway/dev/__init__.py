"""The local development stack: a CPU vLLM and the gateway in front of it."""
