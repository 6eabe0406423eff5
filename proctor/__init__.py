"""proctor: serve the Teacher, Critic and Reward models that distillation and RL trainers learn from.

The package's rooms: `engine` (the server), `kernels` (fused scoring kernels), `v1` (the gRPC wire contract),
`clients` (the library trainers import) and `bench` (benchmarks and the GPU check). docs/architecture.md draws them.
"""
