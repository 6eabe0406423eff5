"""The gRPC door: the servicers of proctor.v1, proto <-> dataclass conversion, and the per-item stream machinery."""
