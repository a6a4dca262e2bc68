"""The engine: model registry, tokenization, dynamic batching, pooling and heads."""
