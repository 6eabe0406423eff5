"""The HTTP front: vLLM's OpenAI-compatible teacher routes, ms-swift's and OpenRLHF's, on one FastAPI app."""
