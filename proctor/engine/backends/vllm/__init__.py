"""The vLLM backend: a Generator on vLLM's engine and the mapping of our settings and items onto it."""
