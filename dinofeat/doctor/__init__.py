"""The doctor layer: `dinofeat doctor` (versions, devices, caches and a self-test of every backend and kernel that
can run here) and the GPU check (`dinofeat doctor --gpu`, also `python -m benchmarks.gpu_check` in a source
checkout).

Owns the self-tests (:mod:`.selftests`), the printed / JSON report (:mod:`.command`) and the GPU check
(:mod:`.gpu_check`, its pytest row :mod:`.gpu_pytest`). May import every layer below it and its sibling
`dinofeat.bench` (the environment probe :mod:`dinofeat.bench.environment`, and the latency and precision
measurements the GPU check runs); the bench layer never imports the doctor. Never imports `dinofeat.cli` or the
repository's `benchmarks/`.
"""

from ..bench.environment import cache_dirs, cpu_name, cuda_status, environment, native_reason
from .command import add_doctor_arguments, doctor_main, main
from .selftests import Check, self_tests

__all__ = ["Check", "add_doctor_arguments", "cache_dirs", "cpu_name", "cuda_status", "doctor_main", "environment",
           "main", "native_reason", "self_tests"]
