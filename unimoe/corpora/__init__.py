"""Corpus transcript layouts parsed in ONE place, for both the training adapters (``data.sources``) and
the benchmark sets (``evaluation.sets``): neither may import the other (tests/test_layering.py), both may
import ``unimoe``. One module per corpus layout; no file access here, only the parsing rules."""
