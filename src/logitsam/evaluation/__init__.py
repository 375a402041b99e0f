"""Evaluation: batched generation, judges (gold reward, reward model, LLM API), win rates, KL."""
