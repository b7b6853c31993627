"""bench/cuda_check.py, the GPU machine's exactness script, runs and passes here on the CPU.

It is run by hand on a GPU (see bench/RESULTS.md); this keeps it from rotting between such runs.
"""

import importlib.util

from conftest import REPO

SCRIPT = REPO / "bench" / "cuda_check.py"


def test_cuda_check_passes_on_the_cpu(capsys):
    spec = importlib.util.spec_from_file_location("cuda_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("ok    ") == 27 and "0 failure(s)" in printed
