"""The math: losses (pure functions in a registry) and their hyperparameter ranges, log-probs, the
model's body forward, the fused head, the objective that ties them together, squeeze metrics."""
