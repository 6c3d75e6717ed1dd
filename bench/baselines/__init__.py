"""Models the suites compare against that no package provides: transformer.py, the plain
pre-norm Transformer LM of the `model` and `decode` suites."""
