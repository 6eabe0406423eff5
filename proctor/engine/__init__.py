"""The proctor server: config, backends, batching, domain logic, the three services, metrics, CLI."""
