"""The store's benchmark (issue 6); bench/run.py is its command, bench/README.md tells what it does."""
