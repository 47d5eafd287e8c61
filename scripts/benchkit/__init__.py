"""The benchmark suite behind ``scripts/bench.py``: us and our peers, side by side."""
