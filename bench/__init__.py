"""`make bench`: the figures of issue #8, measured on this machine.

`python -m bench [--only 1,3] [--quick]` runs the scenarios (one module each), writes
`bench/results.json`, regenerates `bench/REPORT.md` and the PNG plots from it (bench.report),
and prints the tables. Scratch files (logs of every process started) go to `bench/scratch/`.
"""
