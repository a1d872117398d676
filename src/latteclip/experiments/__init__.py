"""Experiments: many runs of the engine (pre-training, every method on every target domain and seed), their choices and
tables.

Used by `latteclip demo` and `benchmarks/domain_shift.py`; it calls the engine and the description stage as
library functions and never the command line.
"""
