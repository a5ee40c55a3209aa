"""`python -m experiments.algorithmic`: see __main__.py; measured results in RESULTS.md."""
