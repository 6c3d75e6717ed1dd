"""Scripts run by hand, each with its usage in its docstring: figures from the result CSVs
(plot.py), profilers and diagnostics of the kernels on a GPU, interleaved A/B runs."""
