"""The gRPC services: proto <-> dataclasses, validation, errors, metrics, admission. Nothing below sees a proto."""
