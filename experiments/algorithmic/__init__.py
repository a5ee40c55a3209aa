"""`python -m experiments.tasks`: see __main__.py; measured results in RESULTS.md."""
