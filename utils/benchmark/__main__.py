"""python -m utils.benchmark: see utils/benchmark/cli.py."""
from utils.benchmark.cli import main

main()
