"""The demo study: offline controlled-sentiment preference data, runs, evaluation and report."""
