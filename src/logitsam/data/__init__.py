"""Preference data: ``files`` (readers: JSONL, JSON, CSV, Parquet, saved datasets), ``examples`` (row
formats -> PreferenceExample, with file:line errors), ``batching`` (tokenize and collate).
The public names are re-exported here: ``from logitsam.data import load_examples``."""

from logitsam.data.examples import FORMATS, PreferenceExample, load_examples

__all__ = ["FORMATS", "PreferenceExample", "load_examples"]
