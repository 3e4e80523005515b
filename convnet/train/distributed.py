"""Data-parallel training over MPI: one communicator, plain or MPI.

``mpiexec -n R convnet train ...`` starts R copies of the same program; each is a *rank*.
Every rank holds the whole model and computes the same shuffled order of the data from
the seed; each takes its own contiguous share of every batch, runs forward and backward
on it, and then the ranks add their gradients with one Allreduce, so that every rank
makes the same update and holds the same weights, bit for bit (docs/distributed.md).

    comm = from_environment()       # Communicator(): one process; MPICommunicator under
    comm.rank, comm.size            # mpiexec with more than one process
    part = comm.share(len(batch))   # this rank's slice of a batch
    comm.average_gradients(grads)   # one flat Allreduce, in place, the mean over ranks
    comm.check_identical(model.state_dict())   # RanksDiverged names the first that differs

A plain run never imports mpi4py: ``from_environment`` looks for the variables an MPI
launcher sets (``PMI_*`` from MPICH's Hydra, ``OMPI_*`` from Open MPI, ``PMIX_*``) and
only then imports it (the ``mpi`` extra: ``pip install "convnet[mpi]"``).

A rank that fails must end the whole job, or the others wait in their next collective
forever: ``abort_if_parallel(err)`` prints ``rank R: error: ...`` (once: not on the ranks
that only heard rank 0's error) and calls MPI_Abort
(what ``python -m mpi4py script.py`` does for an uncaught exception). The CLI calls it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Mapping

import numpy as np

from convnet.limits import is_count as _count

__all__ = ["Communicator", "MPICommunicator", "RanksDiverged", "RootsError", "abort_if_parallel",
           "describe", "from_environment", "launch_size"]

# Set by every rank of an MPI launch: MPICH's Hydra (and Intel MPI) set PMI_RANK and
# PMI_SIZE, Open MPI OMPI_COMM_WORLD_RANK and _SIZE, PMIx launchers PMIX_RANK.
_LAUNCH_RANK = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")
_LAUNCH_SIZE = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
_OPS = ("sum", "mean")
# Seconds a failing rank waits between printing its error and MPI_Abort: MPICH's Hydra
# drops output that it has not forwarded when the job is torn down.
ABORT_GRACE = 0.5
# Seconds a failing rank other than 0 waits before printing: where rank 0 meets the same
# error (every rank checks the same settings), its MPI_Abort ends this rank first, and the
# error is printed once.
PEER_WAIT = 3 * ABORT_GRACE
# The end of check_identical's error about weights.
SAME_UPDATE = "Every rank must make the same update from the same averaged gradients"


class RanksDiverged(RuntimeError):
    """The ranks' weights are no longer bit-identical: names the first array that differs."""


class RootsError(ValueError):
    """Rank 0's error, raised on the other ranks so that every rank stops together; rank 0
    reports it, so ``abort_if_parallel`` does not print it again."""


def _check_flat(array, where):
    """A writable, C-contiguous float NumPy array (what an in-place Allreduce takes)."""
    if not (isinstance(array, np.ndarray) and array.dtype.kind == "f"
            and array.flags.c_contiguous and array.flags.writeable):
        got = (f"{array.dtype} array, contiguous={array.flags.c_contiguous}, "
               f"writeable={array.flags.writeable}" if isinstance(array, np.ndarray)
               else type(array).__name__)
        raise ValueError(f"{where}: expected a writable C-contiguous float array, got {got}")
    return array


def _check_op(op, where):
    if op not in _OPS:
        raise ValueError(f"{where}: op must be one of {', '.join(_OPS)}, got {op!r}")


def _grad_keys(grads, where):
    """The keys of the gradients to reduce, in the fixed order every rank uses: sorted,
    so that a dict built in another order still lines up value for value."""
    if not isinstance(grads, Mapping):
        raise ValueError(f"{where}: grads must be a dict {{dotted name: array}}, got "
                         f"{type(grads).__name__}")
    keys = sorted(key for key, g in grads.items() if g is not None)
    for key in keys:
        g = grads[key]
        if not (isinstance(g, np.ndarray) and g.dtype.kind == "f"):
            raise ValueError(f"{where}: gradient {key!r} must be a float NumPy array, got "
                             f"{getattr(g, 'dtype', type(g).__name__)}")
    return keys


def _checksums(arrays):
    """One signed 63-bit checksum (BLAKE2b of the bytes, shape and dtype) per array, as an
    int64 array in the order of ``arrays`` (non-negative, so that it can be negated)."""
    sums = np.empty(len(arrays), dtype=np.int64)
    for i, a in enumerate(arrays):
        h = hashlib.blake2b(digest_size=8)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).view(np.uint8).ravel())
        sums[i] = int.from_bytes(h.digest(), "little") >> 1
    return sums


class Communicator:
    """One process on its own: the communicator of every plain (non-MPI) run.

    Every collective is the identity: allreduce and average_gradients leave the arrays as
    they are (both ops: the sum and the mean over one rank are the values themselves),
    broadcast returns its value, gather a one-item list. A loop written against this API
    runs unchanged on one process and under ``mpiexec``.

    >>> comm = Communicator()
    >>> comm.rank, comm.size, comm.share(10)
    (0, 1, slice(0, 10, None))
    """

    rank = 0
    size = 1
    local_size = 1        # processes on this machine
    kind = "single process"
    _buffer = None        # average_gradients' flat buffer, kept from step to step

    @property
    def is_root(self):
        """True on rank 0, the one rank that writes files and prints."""
        return self.rank == 0

    def share(self, n, rank=None):
        """This rank's contiguous share of n items: slice(r*n // R, (r+1)*n // R). Shares
        differ by at most one item; with n < R some ranks get none."""
        r = self.rank if rank is None else rank
        return slice(r * n // self.size, (r + 1) * n // self.size)

    def allreduce(self, array, op="sum"):
        """Sum (or average, op="mean") a float array over all ranks, in place; returns it."""
        _check_flat(array, f"{type(self).__name__}.allreduce")
        _check_op(op, f"{type(self).__name__}.allreduce")
        return array

    def average_gradients(self, grads, weight=None, extra=None):
        """Average a dict of gradients over the ranks, in place, with one flat Allreduce.

        grads: {dotted name: float array}, e.g. ``model.grads()``; None values are
        skipped. The arrays are packed in sorted key order (the same on every rank) into
        one buffer of their common dtype, reduced, and copied back into the same arrays.
        weight: what this rank's gradients count for, default 1/size (the plain mean,
        right when every rank's loss is the mean over an equal share). With uneven
        shares pass this rank's share of the batch, n_r / B: the weighted sum is then the
        gradient of the loss over the whole batch. extra: a few more numbers to add up
        over the ranks in the same Allreduce (e.g. loss and accuracy sums); returned
        summed as float64 (None when not given). In that buffer's dtype: exact for
        counts, 7 digits for a float32 model's sums.
        """
        keys = _grad_keys(grads, f"{type(self).__name__}.average_gradients")
        if self.size > 1 or (weight is not None and weight != 1):
            total = self._reduce_gradients(grads, keys,
                                           1 / self.size if weight is None else weight, extra)
            return None if extra is None else total
        return None if extra is None else np.array(extra, dtype=np.float64).ravel()

    def _reduce_gradients(self, grads, keys, weight, extra):
        """Pack (times weight), allreduce, unpack: the work of average_gradients. Returns
        the extra numbers summed (float64)."""
        extra = np.zeros(0) if extra is None else np.asarray(extra, dtype=np.float64).ravel()
        dtype = np.result_type(*(grads[k] for k in keys)) if keys else np.float64
        sizes = [grads[k].size for k in keys]
        total = sum(sizes) + extra.size
        buf = self._buffer
        if buf is None or buf.size != total or buf.dtype != dtype:
            buf = self._buffer = np.empty(total, dtype=dtype)   # reused step after step
        offset = 0
        for key, size in zip(keys, sizes):
            part = buf[offset:offset + size]
            if weight == 1:
                part[...] = grads[key].ravel()
            else:
                np.multiply(grads[key].ravel(), weight, out=part)
            offset += size
        buf[offset:] = extra
        self._allreduce_sum(buf)
        offset = 0
        for key, size in zip(keys, sizes):
            g = grads[key]
            if g.flags.writeable:
                g[...] = buf[offset:offset + size].reshape(g.shape)
            else:
                grads[key] = buf[offset:offset + size].reshape(g.shape).astype(g.dtype)
            offset += size
        return buf[offset:].astype(np.float64)

    def _allreduce_sum(self, array):
        """Sum a float array over the ranks, in place: nothing to add on one process."""

    def broadcast(self, value, root=0):
        """Rank root's value on every rank: a NumPy array is overwritten in place (same
        shape and dtype on every rank), anything else must be JSON (returned decoded)."""
        return value

    def gather(self, value, root=0):
        """[value of rank 0, of rank 1, ...] on rank root (JSON values), None elsewhere."""
        return [value]

    def barrier(self):
        """Wait until every rank has come here."""

    def check_identical(self, arrays, what="weights", why=SAME_UPDATE):
        """Check that every rank holds the same arrays, bit for bit; returns None.

        arrays: {name: array}, e.g. ``model.state_dict()`` (parameters and running
        statistics), the same names in the same order on every rank. Each array's BLAKE2b
        checksum (of its bytes, shape and dtype) goes into one Allreduce of [max, -min]:
        where they differ, RanksDiverged says that ``what`` differ, names the first array
        that differs and the ranks' checksums of it, and ends with ``why``.
        """
        if not isinstance(arrays, Mapping):
            raise ValueError(f"{type(self).__name__}.check_identical: expected a dict of "
                             f"arrays, got {type(arrays).__name__}")

    def abort(self, code=1):
        """End every rank of the job now (MPI_Abort); a single process just exits."""
        sys.exit(code)


class MPICommunicator(Communicator):
    """The ranks of an MPI job (mpi4py's COMM_WORLD by default); see Communicator.

    Reductions run on float64 or float32 buffers with MPI_SUM: the result is the same on
    every rank (MPICH and Open MPI reduce each element in one fixed order and send the
    result to all), which check_identical verifies.
    """

    def __init__(self, comm=None):
        from mpi4py import MPI

        self._MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.local_size = self.comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()
        first = MPI.Get_library_version().strip().splitlines()[0]   # "MPICH Version: 5.0.2"
        self.kind = "MPI: " + " ".join(first.replace("Version:", "").split(",")[0].split())

    def allreduce(self, array, op="sum"):
        super().allreduce(array, op)
        self._allreduce_sum(array)
        if op == "mean":
            array /= self.size
        return array

    def _allreduce_sum(self, array):
        self.comm.Allreduce(self._MPI.IN_PLACE, array, op=self._MPI.SUM)

    def broadcast(self, value, root=0):
        if isinstance(value, np.ndarray):
            self.comm.Bcast(value, root=root)
            return value
        text = json.dumps(value) if self.rank == root else None
        return json.loads(self.comm.bcast(text, root=root))

    def gather(self, value, root=0):
        texts = self.comm.gather(json.dumps(value), root=root)
        return None if texts is None else [json.loads(t) for t in texts]

    def barrier(self):
        self.comm.Barrier()

    def check_identical(self, arrays, what="weights", why=SAME_UPDATE):
        super().check_identical(arrays, what, why)
        names = list(arrays)
        sums = _checksums([np.asarray(arrays[k]) for k in names])
        both = np.concatenate([sums, -sums])
        self.comm.Allreduce(self._MPI.IN_PLACE, both, op=self._MPI.MAX)
        differ = np.nonzero(both[:len(names)] != -both[len(names):])[0]
        if differ.size == 0:
            return
        first = int(differ[0])
        every = np.empty(self.size, dtype=np.int64)
        self.comm.Allgather(sums[first:first + 1], every)
        groups = {}
        for rank, value in enumerate(every.tolist()):
            groups.setdefault(value, []).append(rank)
        held = "; ".join(f"rank{'s' * (len(ranks) > 1)} {', '.join(map(str, ranks))}: "
                         f"checksum {value:016x}"
                         for value, ranks in groups.items())
        raise RanksDiverged(
            f"{what} differ across the {self.size} ranks: first {names[first]!r} ({held}); "
            f"{differ.size} of {len(names)} arrays differ. {why}")

    def abort(self, code=1):
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(ABORT_GRACE)   # the launcher forwards what was just printed
        self.comm.Abort(code)
        os._exit(code)            # MPI_Abort may return while the launcher ends the job


def launch_size(environ=None):
    """How many processes the MPI launcher says it started: an int from PMI_SIZE or
    OMPI_COMM_WORLD_SIZE; None if it names none (a PMIx launch, where only MPI knows);
    0 when no MPI launch is detected at all."""
    environ = os.environ if environ is None else environ
    for name in _LAUNCH_SIZE:
        if _count(environ.get(name, "").strip()):
            return int(environ[name])
    if any(name in environ for name in _LAUNCH_RANK):
        return None
    return 0


def launch_rank(environ=None):
    """This process's rank as the MPI launcher gives it (PMI_RANK, OMPI_COMM_WORLD_RANK,
    PMIX_RANK), or None when it names none: known before MPI is started, for what must
    be said once (argparse's messages)."""
    environ = os.environ if environ is None else environ
    for name in _LAUNCH_RANK:
        if _count(environ.get(name, "").strip()):
            return int(environ[name])
    return None


_WORLD = None


def from_environment():
    """The communicator this process was started with, made once and kept.

    No MPI launch detected (see launch_size), or a launch of one process: the plain
    Communicator, without importing mpi4py. An MPI launch of more than one process:
    MPICommunicator over COMM_WORLD (ImportError naming the ``mpi`` extra when mpi4py is
    missing; ValueError when MPI counts other processes than the launcher started, the
    sign of an mpi4py on another MPI library). A PMIx launch that does not say its size
    imports mpi4py to ask.
    """
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    size = launch_size()
    if size in (0, 1):
        _WORLD = Communicator()
        return _WORLD
    try:
        from mpi4py import MPI
    except ImportError as err:
        raise ImportError(
            f"convnet was started by an MPI launcher ({size or 'several'} processes) but "
            f"cannot import mpi4py ({err}): install the mpi extra, pip install "
            f"'convnet[mpi]' (mpi4py and the MPICH runtime), or run without mpiexec"
        ) from None
    if size and MPI.COMM_WORLD.Get_size() != size:   # each process would train alone
        library = " ".join(MPI.Get_library_version().splitlines()[0].split())
        raise ValueError(
            f"the MPI launcher started {size} processes but MPI sees "
            f"{MPI.COMM_WORLD.Get_size()}: mpi4py is using another MPI library "
            f"({library}) than the launcher's mpiexec; use the mpiexec of that library "
            f"(docs/distributed.md)")
    _WORLD = MPICommunicator() if MPI.COMM_WORLD.Get_size() > 1 else Communicator()
    return _WORLD


def abort_if_parallel(err, text=None):
    """End the whole MPI job because this rank failed with ``err`` (an exception, or a
    KeyboardInterrupt); returns at once when this is not a launch of several processes
    (the caller then reports the error and exits as usual).

    Prints ``rank R: TEXT; ending all N processes`` (text, default ``error: str(err)``) to
    stderr, unless err is a RootsError (rank 0 reports it), and calls MPI_Abort, which ends
    every rank (the others would wait in their next collective forever). Ranks other than
    0 wait PEER_WAIT seconds before printing, so that an error every rank meets is printed
    once, by rank 0. The checkpoint rank 0 wrote last is whole (checkpoints are renamed
    into place), so the run can be resumed.
    """
    size = launch_size()
    if size in (0, 1):
        return
    try:
        comm = from_environment()
    except Exception:   # no mpi4py, or not the launcher's MPI: nothing to abort through
        return
    if comm.size < 2:
        return
    if not isinstance(err, RootsError):
        text = text or f"error: {str(err).strip() or type(err).__name__}"
        if comm.rank != 0:
            time.sleep(PEER_WAIT)
        print(f"rank {comm.rank}: {text}; ending all {comm.size} processes",
              file=sys.stderr, flush=True)
    comm.abort(1)


def _blas_threads():
    """The threads the loaded BLAS uses (threadpoolctl), else what OPENBLAS_NUM_THREADS,
    OMP_NUM_THREADS or MKL_NUM_THREADS asks for; None when neither says."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        info = []
    else:
        info = [lib for lib in threadpool_info() if lib.get("user_api") == "blas"]
    if info:
        return max(lib["num_threads"] for lib in info)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if _count(os.environ.get(name, "").strip()):
            return int(os.environ[name])
    return None


def describe(comm):
    """One line on what a run runs on: processes (and the MPI library), convnet's
    threads per process and BLAS's, with a hint when they are more than the cores."""
    from convnet.functional.threads import THREADS

    n = comm.size
    blas = _blas_threads()
    text = (f"running on {n} process{'es' if n > 1 else ''}"
            f"{f' ({comm.kind})' if n > 1 else ''} x {THREADS} "
            f"thread{'s' if THREADS > 1 else ''}{' each' if n > 1 else ''} (BLAS: "
            f"{'unknown' if blas is None else blas})")
    cores = os.cpu_count() or 1       # the machine's: a rank's binding is its share
    busiest = comm.local_size * max(THREADS, blas or 1)
    if n > 1 and comm.local_size > cores:   # no thread setting helps
        text += (f"; {comm.local_size} processes here on {cores} cores: start at most "
                 f"{cores} on this machine")
    elif busiest > cores:           # one process too: CONVNET_THREADS=8 on 2 cores
        share = max(1, cores // comm.local_size)
        settings = [f"{name}={share}" for name, count in (
            ("CONVNET_THREADS", THREADS), ("OPENBLAS_NUM_THREADS", blas or 1)) if count > share]
        here = f"{comm.local_size} processes here want" if n > 1 else "it wants"
        text += (f"; {here} {busiest} threads on {cores} cores: set "
                 f"{' and '.join(settings)} (docs/distributed.md)")
    return text
