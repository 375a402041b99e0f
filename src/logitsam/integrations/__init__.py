"""Adapters that bring logits-SAM to other training libraries (``integrations.trl``: TRL's trainers)."""
