"""The server process: config -> backends -> services, gRPC, health, metrics endpoint, drain."""
