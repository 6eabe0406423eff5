"""The torch backend: a Generator and a Classifier on transformers models, their batching and sampling."""
