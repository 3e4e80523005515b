"""The threaded paths (functional/threads.py) against PyTorch, with every size split.

Real inputs below PARALLEL_BYTES run on one thread, so the tests set it to 0: every copy,
ReLU, pooling step and transpose is then split over the threads, along N or, for a
batch of one, along C.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from convnet.functional import threads
from convnet.functional.activation import relu_backward, relu_forward
from convnet.functional.conv import conv2d_backward, conv2d_forward, conv2d_infer
from convnet.functional.norm import batch_norm_backward, batch_norm_forward
from convnet.functional.pool import maxpool2d_backward, maxpool2d_forward
from tests.utils import rel_error


@pytest.fixture(autouse=True)
def split_everything(monkeypatch):
    monkeypatch.setattr(threads, "PARALLEL_BYTES", 0)
    assert threads.THREADS >= 1


def torch_grads(fn, x, *params, dout):
    ts = [torch.tensor(a, requires_grad=True) for a in (x, *params)]
    out = fn(*ts)
    out.backward(torch.tensor(dout))
    return out.detach().numpy(), [t.grad.numpy() for t in ts]


@pytest.mark.parametrize("n, c, k, groups, stride, contiguous", [
    (1, 3, 1, 1, 1, True), (1, 4, 6, 2, 1, False), (3, 2, 5, 1, 2, True),
    (4, 6, 6, 3, 1, False), (2, 1, 1, 1, 1, True)])
def test_conv_forward_backward_and_infer_split(n, c, k, groups, stride, contiguous):
    rng = np.random.default_rng(n * 10 + k)
    x = rng.standard_normal((n, c, 9, 11))
    if not contiguous:
        x = np.asfortranarray(x)
    w = rng.standard_normal((k, c // groups, 3, 3))
    b = rng.standard_normal(k)
    args = ((stride, stride), (1, 1), (1, 1), groups)
    out, cache = conv2d_forward(x, w, b, *args, fit="floor")
    dout = rng.standard_normal(out.shape)
    ref, (dx_t, dw_t, db_t) = torch_grads(
        lambda a, v, c_: TF.conv2d(a, v, c_, *args), x, w, b, dout=dout)
    assert rel_error(out, ref) < 1e-10
    dx, dw, db = conv2d_backward(dout, cache)
    for got, expected in ((dx, dx_t), (dw, dw_t), (db, db_t)):
        assert rel_error(got, expected) < 1e-10
    for limit in (1 << 30, 1):
        assert rel_error(conv2d_infer(x, w, b, *args, fit="floor", max_bytes=limit), ref) < 1e-10
        relu = conv2d_infer(x, w, b, *args, fit="floor", max_bytes=limit, relu=True)
        assert rel_error(relu, np.maximum(ref, 0)) < 1e-10
        assert rel_error(conv2d_infer(x, w, None, *args, fit="floor", max_bytes=limit,
                                      relu=True), np.maximum(ref - b.reshape(-1, 1, 1), 0)) < 1e-10
        scale = rng.standard_normal(k)
        scaled = conv2d_infer(x, w, b, *args, fit="floor", max_bytes=limit, scale=scale)
        expected = (ref - b.reshape(-1, 1, 1)) * scale.reshape(-1, 1, 1) + b.reshape(-1, 1, 1)
        assert rel_error(scaled, expected) < 1e-10


@pytest.mark.parametrize("shape, kernel, stride", [
    ((1, 5, 8, 8), 2, 2), ((3, 2, 8, 6), 2, 2), ((2, 3, 9, 9), 3, 2), ((1, 1, 7, 7), 3, 1)])
def test_maxpool_split(shape, kernel, stride):
    rng = np.random.default_rng(sum(shape))
    x = rng.integers(0, 3, shape).astype(np.float64)     # ties: the first max must win
    out, cache = maxpool2d_forward(x, (kernel,) * 2, (stride,) * 2)
    dout = rng.standard_normal(out.shape)
    ref, (dx_t,) = torch_grads(lambda a: TF.max_pool2d(a, kernel, stride), x, dout=dout)
    np.testing.assert_array_equal(out, ref)
    assert rel_error(maxpool2d_backward(dout, cache), dx_t) < 1e-12
    np.testing.assert_array_equal(maxpool2d_forward(x, (kernel,) * 2, (stride,) * 2,
                                                    switches=False)[0], ref)


@pytest.mark.parametrize("shape", [(1, 3, 4, 4), (5, 2, 3, 3), (7,), (1, 1)])
def test_relu_split(shape):
    rng = np.random.default_rng(len(shape))
    x = rng.standard_normal(shape)
    out, cache = relu_forward(x)
    np.testing.assert_array_equal(out, np.maximum(x, 0))
    dout = rng.standard_normal(shape)
    np.testing.assert_array_equal(relu_backward(dout, cache), dout * (x > 0))
    y = x.copy()
    assert relu_forward(y, inplace=True)[0] is y
    np.testing.assert_array_equal(y, np.maximum(x, 0))


def test_a_failing_part_waits_for_the_others():
    """An error on the calling thread's part is raised only after the workers finish."""
    import time
    done = []

    def work(part):
        if part.start == 0 and threads.THREADS > 1:
            time.sleep(0.05)
            done.append(part)
        else:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        threads.in_parallel(work, 4, 1 << 30)
    assert len(done) == (1 if threads.THREADS > 1 else 0)


@pytest.mark.parametrize("shape, contiguous", [
    ((1, 5, 4, 3), True), ((3, 4, 5, 5), False), ((4, 3), True), ((2, 3, 7), False)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_split(shape, contiguous, training):
    """Batch norm's per-row sums and elementwise passes, split along N (or C for a batch of
    one), against PyTorch; non-contiguous x and dout too."""
    rng = np.random.default_rng(sum(shape))
    c = shape[1]
    x = rng.standard_normal(shape) * 3 + 2
    dout = rng.standard_normal(shape)
    if not contiguous:
        x, dout = np.asfortranarray(x), np.asfortranarray(dout)
    w, b = rng.standard_normal(c), rng.standard_normal(c)
    mean, var = rng.standard_normal(c), rng.uniform(0.5, 2, c)
    stats = () if training else (mean, var)
    out, cache = batch_norm_forward(x, w, b, *stats, eps=1e-3)
    ref, (dx_t, dw_t, db_t) = torch_grads(
        lambda a, g, h: TF.batch_norm(a, torch.tensor(mean), torch.tensor(var), g, h,
                                      training=training, eps=1e-3), x, w, b, dout=dout)
    assert rel_error(out, ref) < 1e-10
    for got, expected in zip(batch_norm_backward(dout, cache), (dx_t, dw_t, db_t)):
        assert rel_error(got, expected) < 1e-10


@pytest.mark.parametrize("shape, kernel, stride, padding", [
    ((1, 4, 9, 9), 3, 2, 1), ((3, 2, 10, 8), (3, 4), (2, 1), (1, 2)), ((2, 3, 7, 7), 5, 1, 2)])
def test_maxpool_without_switches_is_separable_and_split(shape, kernel, stride, padding):
    """Inference's max pooling (columns, then rows) equals PyTorch's, NaN included."""
    rng = np.random.default_rng(sum(shape))
    x = rng.integers(-3, 3, shape).astype(np.float64)
    x[0, 0, 1, 1] = np.nan
    k, s, p = (v if isinstance(v, tuple) else (v, v) for v in (kernel, stride, padding))
    out, cache = maxpool2d_forward(x, k, s, p, switches=False)
    assert cache is None
    expected = TF.max_pool2d(torch.tensor(x), k, s, p).numpy()
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("n, size", [(1, 3), (1, 1), (2, 1)])
def test_conv_infer_finishes_any_output_split(n, size):
    """Bias, scale and RELU on the output are sliced with it, however it is split: a
    batch of one with a 1x1 output is split along K."""
    rng = np.random.default_rng(n + size)
    x = rng.standard_normal((n, 2, size + 2, size + 2))
    w, b, scale = rng.standard_normal((6, 2, 3, 3)), rng.standard_normal(6), rng.standard_normal(6)
    ref = TF.conv2d(torch.tensor(x), torch.tensor(w)).numpy()
    expected = np.maximum(ref * scale.reshape(-1, 1, 1) + b.reshape(-1, 1, 1), 0)
    out = conv2d_infer(x, w, b, relu=True, scale=scale)
    assert rel_error(out, expected) < 1e-10


def blas_threads():
    from threadpoolctl import threadpool_info
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def test_per_thread_runs_a_part_on_each_thread_with_blas_on_one():
    """Each thread gets its own part and BLAS runs on one thread meanwhile (restored
    after); an in_parallel call inside a part runs on that part's thread, whole."""
    import threading
    before = blas_threads()
    seen = []

    def work(part):
        inner = []
        threads.in_parallel(inner.append, 10, 1 << 30)
        seen.append((part, threading.get_ident(), blas_threads(), inner))

    threads.per_thread(work, 5)
    assert blas_threads() == before
    if threads.THREADS == 1 or not before:
        assert [s[0] for s in seen] == [slice(0, 5)]
        return
    assert sorted((s[0].start, s[0].stop) for s in seen) == [(0, 3), (3, 5)]
    assert len({s[1] for s in seen}) == 2
    assert all(s[2] == [1] * len(before) and s[3] == [slice(0, 10)] for s in seen)


@pytest.mark.parametrize("size", [1, 0])
def test_per_thread_runs_once_for_one_part_or_without_threadpoolctl(size, monkeypatch):
    """A single image, or no way to set BLAS's threads: one call over everything, BLAS
    left as it is."""
    before = blas_threads()
    seen = []
    threads.per_thread(lambda part: seen.append((part, blas_threads())), size)
    monkeypatch.setattr(threads, "_blas", False)
    threads.per_thread(lambda part: seen.append((part, blas_threads())), 4)
    assert seen == [(slice(0, size), before), (slice(0, 4), before)]


def test_one_thread_keeps_every_split_inside_it_on_the_calling_thread():
    """one_thread runs fn on the calling thread with BLAS on one thread; in_parallel and
    per_thread inside it run whole, there (then BLAS and the splits are as before)."""
    import threading
    before = blas_threads()
    seen = []

    def work(x):
        threads.in_parallel(lambda part: seen.append(("in", part, threading.get_ident())),
                            10, 1 << 30)
        threads.per_thread(lambda part: seen.append(("per", part, threading.get_ident())), 6)
        return x + 1, blas_threads()

    assert threads.one_thread(work, 1) == (2, [1] * len(before))
    me = threading.get_ident()
    assert seen == [("in", slice(0, 10), me), ("per", slice(0, 6), me)]
    assert blas_threads() == before
    seen.clear()
    threads.in_parallel(lambda part: seen.append(part), 10, 1 << 30)
    assert len(seen) == threads.THREADS


def test_one_blas_thread_is_shared_by_nested_and_concurrent_holders():
    """The first hold sets BLAS to one thread, the last lifts it; holds on other threads
    (per_thread's parts, a user's threads) share the same limit."""
    from concurrent.futures import ThreadPoolExecutor
    before = blas_threads()
    assert before and max(before) >= 1
    with threads.one_blas_thread():
        assert blas_threads() == [1] * len(before)
        with threads.one_blas_thread():
            assert blas_threads() == [1] * len(before)
        assert blas_threads() == [1] * len(before)           # the outer hold stands
        with ThreadPoolExecutor(1) as pool:                  # another thread's hold
            def hold():
                with threads.one_blas_thread():
                    return blas_threads()
            assert pool.submit(hold).result() == [1] * len(before)
        assert blas_threads() == [1] * len(before)
    assert blas_threads() == before


def test_a_hold_on_any_thread_sets_blas_and_the_last_to_end_puts_it_back():
    """threadpoolctl lets only the first thread that set OpenBLAS's count set it again: a
    model call on another thread had run BLAS on all its threads, and where two calls
    overlapped, the one on another thread ending last left BLAS on one thread for good."""
    import threading
    from concurrent.futures import ThreadPoolExecutor
    before = blas_threads()
    with threads.one_blas_thread():          # the main thread holds first
        pass

    def hold():
        with threads.one_blas_thread():
            return blas_threads()
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(hold).result() == [1] * len(before)
    assert blas_threads() == before
    entered, main_done = threading.Event(), threading.Event()

    def late():
        with threads.one_blas_thread():
            entered.set()
            main_done.wait(30)
    other = threading.Thread(target=late)
    with threads.one_blas_thread():          # main first; the other thread ends last
        other.start()
        entered.wait(30)
    main_done.set()
    other.join(30)
    assert blas_threads() == before


@pytest.mark.parametrize("case", ["fork", "atexit", "fork in a hold"])
def test_a_forked_child_and_an_atexit_handler_can_call_a_model(case):
    """A child forked after a model call had waited for good on the parent's pool
    threads; a model called at interpreter shutdown had raised "cannot schedule new
    futures after interpreter shutdown"."""
    import subprocess
    import sys
    code = {"fork": (
        "import os, numpy as np\n"
        "from convnet.models import from_notation\n"
        "m = from_notation('INPUT 32x32x16 -> CONV 16 -> RELU -> FC 4')\n"
        "x = np.ones((8, 16, 32, 32), np.float32)\n"
        "want = m.infer(x)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(0 if np.array_equal(m.infer(x), want) else 3)\n"
        "print(os.waitpid(pid, 0)[1])\n"), "atexit": (
        "import atexit, numpy as np\n"
        "from convnet.models import from_notation\n"
        "m = from_notation('INPUT 32x32x16 -> CONV 16 -> RELU -> FC 4')\n"
        "atexit.register(lambda: print(m.infer(np.ones((8, 16, 32, 32), np.float32)).shape))\n"),
        "fork in a hold": (    # the child starts with BLAS as before the hold, and its own
        "import os\n"           # holds set and restore it (its count had gone below 0)
        "from convnet.functional import threads as T\n"
        "from threadpoolctl import threadpool_info\n"
        "n = lambda: [i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas']\n"
        "before = n()\n"
        "with T.one_blas_thread():\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        ok = n() == before\n"
        "        with T.one_blas_thread():\n"
        "            ok = ok and n() == [1] * len(before)\n"
        "        os._exit(0 if ok and n() == before and T._holders == 0 else 3)\n"
        "print(os.waitpid(pid, 0)[1])\n")}
    done = subprocess.run([sys.executable, "-c", code[case]], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and "Error" not in done.stderr, done.stderr
    assert done.stdout.strip() == ("(8, 4)" if case == "atexit" else "0")


def test_a_model_call_holds_blas_once_for_all_its_layers(monkeypatch):
    """Containers' forward, backward and infer hold BLAS to one thread (holding_blas):
    every layer inside sees one BLAS thread, and after the call BLAS is as it was."""
    from convnet.layers.activation import ReLU
    from convnet.layers.base import Layer
    from convnet.models.containers import Sequential
    seen = []

    class Spy(Layer):
        def forward(self, x):
            seen.append(blas_threads())
            return x

        def backward(self, dout):
            seen.append(blas_threads())
            return dout
    before = blas_threads()
    net = Sequential(Spy(), ReLU(), Sequential(Spy()))
    x = np.ones((2, 3))
    net.forward(x)
    net.backward(x)
    net.infer(x)
    assert seen == [[1] * len(before)] * 6
    assert blas_threads() == before


@pytest.mark.parametrize("shapes", [((300, 500), (500, 700)), ((700, 500), (500, 3)),
                                    ((2, 64, 300), (2, 300, 900)), ((5, 7), (7, 3)),
                                    ((900, 300), (300,  900)), ((1, 500), "W.T 700"),
                                    ((32, 300), "W.T 900"), ((33, 300), "W.T 900")])
def test_matmul_split_between_threads_equals_numpy(shapes, monkeypatch):
    """threads.matmul splits a large product's columns (or rows) between the threads, or
    for x @ W.T with few rows of x the rows of W: the same numbers as np.matmul, in C
    order, into a given out too; small products are np.matmul."""
    monkeypatch.setattr(threads, "MATMUL_SPLIT_FLOPS", 0)
    rng = np.random.default_rng(3)
    a = rng.standard_normal(shapes[0])
    if isinstance(shapes[1], str):            # an FC layer's weights, transposed
        b = rng.standard_normal((int(shapes[1].split()[1]), a.shape[1])).T
    else:
        b = rng.standard_normal(shapes[1])
    want = np.matmul(a, b)
    got = threads.matmul(a, b)
    assert np.allclose(got, want, rtol=1e-12, atol=1e-12) and got.flags.c_contiguous
    out = np.full(want.shape, np.nan)
    assert threads.matmul(a, b, out=out) is out
    assert np.allclose(out, want, rtol=1e-12, atol=1e-12)


def test_parts_run_with_the_callers_numpy_error_settings():
    """np.errstate holds in every part, the workers' too: a part that divides by zero
    raises as the same operation on the calling thread would (on one core there is no
    worker and the one part runs on the calling thread: the same holds)."""
    x = np.ones(8)
    x[0] = 0.0                                  # in the first part: a worker's

    def divide(part):
        np.divide(1.0, x[part])

    with np.errstate(divide="raise"):
        with pytest.raises(FloatingPointError):
            threads.in_parallel(divide, x.size, x.nbytes)
    with np.errstate(divide="ignore"):
        threads.in_parallel(divide, x.size, x.nbytes)       # no warning, no error


@pytest.mark.parametrize("value", ["abc", "0", "-2", "\u00b2", "\u0663", "9" * 30, "257"])
def test_a_bad_thread_count_is_one_line_from_the_cli_and_an_error_from_a_model(value):
    """CONVNET_THREADS had raised at import: a traceback before the command line could
    say it in one line (a superscript digit, which str.isdigit takes and int() does not,
    until now; an Arabic-Indic 3 had been taken as 3)."""
    import os
    import subprocess
    import sys
    env = {**os.environ, "CONVNET_THREADS": value}
    cli = subprocess.run([sys.executable, "-m", "convnet.cli", "train", "--epochs", "1"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2 and "Traceback" not in cli.stderr, cli.stderr
    assert cli.stderr == (f"convnet train: error: CONVNET_THREADS must be a positive int "
                          f"of at most 256 (the threads of each process), got {value!r}\n")
    model = subprocess.run([sys.executable, "-c", (
        "import numpy as np; from convnet.models import from_notation; "
        "from_notation('INPUT 4x4x1 -> FC 2').infer(np.zeros((1, 1, 4, 4)))")],
        env=env, capture_output=True, text=True, timeout=120)
    assert model.returncode == 1
    assert model.stderr.strip().endswith(f"ValueError: CONVNET_THREADS must be a positive "
                                         f"int of at most 256 (the threads of each "
                                         f"process), got {value!r}")


def test_release_scratch_while_a_thread_makes_its_first_buffers(monkeypatch):
    """A thread's first scratch call while release_scratch() walked the threads' buffers
    had raised "dictionary changed size during iteration"; the walk is made again."""
    from convnet.functional.conv import machinery
    kept = {"cols": np.ones(4)}

    class Changing(dict):
        calls = 0

        def values(self):
            Changing.calls += 1
            if Changing.calls == 1:
                raise RuntimeError("dictionary changed size during iteration")
            return super().values()
    monkeypatch.setattr(machinery, "_scratch", Changing(main=kept))
    machinery.release_scratch()
    assert Changing.calls == 2 and kept == {}
