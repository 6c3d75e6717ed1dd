"""The measuring harness: the library every suite uses.

A suite is a list of cases (shapes) and providers (implementations). Each provider runs in its
own Python process over all cases, so a provider that aborts the process (the TFLA `xl_chunk`
kernel under Triton 3.6 without DISABLE_LLVM_OPT=1) or leaks memory cannot take the others
down; a case that kills its worker is recorded as such and the worker restarts after it.

For each (case, mode) a worker reports the median time of `triton.testing.do_bench` after its
warm-up and the peak memory of one call, inputs included (`torch.cuda.max_memory_allocated`).
Rows go to a CSV with the suite, GPU name, torch/triton/peer versions, date and git commit.

Without CUDA (smoke tests, `--quick` on a laptop) a worker times a few calls with the wall clock
and leaves the memory empty; a provider that needs CUDA or a missing package raises
`Unavailable` from its setup and is recorded with status "unavailable".

Map:
    provider.py  Provider, Unavailable, device(), require_cuda(), require_module(): what a suite
                 writes its providers with
    measure.py   the worker side: measure_cases(), run_worker()
    run.py       the parent side: run_suite(), environment(), print_table()
    setups.py    pieces of provider setups several suites share: fw_fwbw(), attention_call()
    results.py   the CSVs under bench/results/: append_csv(), read_csv()
    ceilings.py  the GPU's matmul and copy rates (TFLOPS, TBPS) the floors use; run it to measure
"""

from bench.harness.measure import EXIT_CONTEXT_LOST, measure_cases, run_worker
from bench.harness.provider import (MODES, Provider, Unavailable, case_label, device, require_cuda,
                                    require_module)
from bench.harness.results import REPO, RESULTS_DIR, append_csv, read_csv
from bench.harness.run import environment, print_table, run_suite

__all__ = ["Provider", "Unavailable", "MODES", "device", "require_cuda", "require_module", "case_label",
           "measure_cases", "run_worker", "EXIT_CONTEXT_LOST", "run_suite",
           "environment", "print_table", "append_csv", "read_csv", "REPO", "RESULTS_DIR"]
