"""Evaluation: batched generation, judges (a score such as VADER sentiment, a reward model, an LLM), win rates, KL."""
