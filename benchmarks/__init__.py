"""pymesh benchmarks: load runs against pymesh and its peers (haproxy), reporting ratios.

`python -m benchmarks.run` is the harness (`make bench`); `benchmarks/README.md` explains the
method and carries the table generated from the committed JSON in `benchmarks/results/`.
"""
