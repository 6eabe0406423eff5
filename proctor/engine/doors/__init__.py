"""The doors: gRPC and HTTP, each converting its wire format to and from the cores' dataclasses. Neither imports
the other."""
