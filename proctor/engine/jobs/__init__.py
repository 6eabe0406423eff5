"""Offline jobs run from the CLI (demo, distill, train-critic, the config reference); the server imports none."""
