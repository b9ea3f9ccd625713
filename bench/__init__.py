"""The benchmark suite: the engine side by side with its peers (see bench/README.md)."""
