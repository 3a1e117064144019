"""Talking to vLLM: the pooled HTTP client and the request dialect for each vLLM release."""
