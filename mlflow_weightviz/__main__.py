"""``python -m mlflow_weightviz``."""

from mlflow_weightviz.cli import main

main()
