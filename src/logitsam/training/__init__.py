"""Training runs: ``run`` (the entry point), ``preflight`` (checks before anything is written),
``trainer`` (PreferenceTrainer), ``models``, ``reference`` (cached reference log-probs),
``checkpoints`` / ``resume`` / ``rundir`` (the run directory's lifecycle), ``logs``."""
