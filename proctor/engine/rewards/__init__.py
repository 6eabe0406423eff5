"""The reward domain: Atom-Searcher's reward and what it needs (pure Python)."""
