"""Experiments built on the library (the library never imports them): the squeeze-regime study."""
