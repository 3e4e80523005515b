"""convnet: a ConvNet library on NumPy, written next to the CS231n notes."""

import os

from convnet.limits import cores_per_process as _cores_per_process

# OpenBLAS's worker threads spin for about 2^28 cycles (~0.1 s) after every matrix multiply
# before they sleep, holding a core that convnet's own copies and elementwise threads need
# between the GEMMs (on 2 cores that costs 15-30% of a training step). 2^4 cycles lets them
# sleep at once. OpenBLAS reads this when it loads, so it only takes effect when convnet
# is imported before NumPy (as the `convnet` command does); set it yourself otherwise.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
# Under an MPI launcher, the processes on one machine share its cores: BLAS takes its share
# (read when OpenBLAS loads, as above; convnet's own threads: functional/threads.py).
_local_ranks = (os.environ.get("MPI_LOCALNRANKS")
                or os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE") or "1").strip()
if _local_ranks.isascii() and _local_ranks.isdigit() and len(_local_ranks) < 10 \
        and int(_local_ranks) > 1:
    os.environ.setdefault("OPENBLAS_NUM_THREADS",
                          str(_cores_per_process(int(_local_ranks))))

__version__ = "0.1.0"
