"""Labeling: generation with transformers, the engine registry (transformers, vLLM), shard labeling, Ray."""
