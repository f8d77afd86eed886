"""Per-call cost of a tiny forward through the Python package: T = 1 (or --tokens), d_in = d_out = 64, rank 4, E = 4,
one CPU thread, so that what is measured is the package and the boundary rather than the arithmetic.

    MOERGING_LIBRARY=artifacts/native/libmoerging.so PYTHONPATH=interop/python \
        python3 interop/python/bench/forward_overhead.py [--tokens T] [--calls N] [--repeat R]

Each figure is the best of R timeit runs of N calls, in µs per call (the best, because the machine's other load only
ever adds time). The out= cases run when the package has out= (older ones had not); "ctypes floor" is moe_forward
called straight through ctypes with the pointers computed once, the least any wrapper can cost.
"""

import argparse
import ctypes
import inspect
import os
import shutil
import sys
import tempfile
import timeit

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from test_moerging import write_adapter  # noqa: E402  (the tests' PEFT adapter writer)

import moerging  # noqa: E402

EXPERTS, DIM, RANK = 4, 64, 4
MODULE = "model.layers.0.self_attn.q_proj"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=1)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=7)
    arguments = parser.parse_args()

    rng = np.random.default_rng(0)
    root = tempfile.mkdtemp(prefix="moerging-bench-")
    try:
        paths = []
        for e in range(EXPERTS):
            a = rng.normal(0, DIM**-0.5, (RANK, DIM)).astype(np.float32)
            b = rng.normal(0, RANK**-0.5, (DIM, RANK)).astype(np.float32)
            paths.append(os.path.join(root, f"expert-{e}"))
            write_adapter(paths[-1], RANK, 8.0, False, {MODULE: (a, b)})
        with moerging.Engine("cpu", cpu_threads=1) as engine, engine.session() as session, \
                moerging.Library(paths) as library:
            module = library.module("q_proj")
            tokens = arguments.tokens
            x, base = (rng.normal(size=(tokens, DIM)).astype(np.float32) for _ in range(2))
            ids, weights = np.tile([[0, 2]], (tokens, 1)).astype(np.int32), np.full((tokens, 2), 0.5, np.float32)
            y = np.empty((tokens, DIM), np.float32)
            has_out = "out" in inspect.signature(session.forward).parameters
            print(f"moerging {getattr(moerging, '__version__', '(no __version__)')} from {moerging.__file__}")
            print(f"T = {tokens}, d = {DIM}, r = {RANK}, E = {EXPERTS}; best of {arguments.repeat} x {arguments.calls} calls, "
                  f"µs per call")
            for name, router in (("fixed", moerging.Router.fixed([0.4, 0.3, 0.2, 0.1])),
                                 ("arrow top-2", moerging.Router.arrow(module, top_k=2))):
                slots = (np.empty((tokens, router.top_k), np.int32), np.empty((tokens, router.top_k), np.float32))
                cases = [(f"forward, {name}", lambda: session.forward(module, router, x, base))]
                if has_out:
                    cases.append((f"forward out=, {name}",
                                  lambda: session.forward(module, router, x, base, out=y, expert_ids_out=slots[0],
                                                          expert_weights_out=slots[1])))
                    cases.append((f"forward out=base (in place), {name}",
                                  lambda: session.forward(module, router, x, y, out=y, expert_ids_out=slots[0],
                                                          expert_weights_out=slots[1])))
                pointers = [a.ctypes.data_as(ctypes.POINTER(ctypes.c_float)) for a in (x, base, y)]
                pointers += [slots[0].ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
                             slots[1].ctypes.data_as(ctypes.POINTER(ctypes.c_float))]
                handles = (session.handle, module.handle, router.handle)
                cases.append((f"ctypes floor, {name}",
                               lambda: moerging.lib.moe_forward(*handles, pointers[0], x.size, pointers[1], pointers[2],
                                                                y.size, pointers[3], pointers[4], slots[0].size)))
                measure(cases, arguments)
                router.close()
            cases = [("forward_assigned, k = 2", lambda: session.forward_assigned(module, ids, weights, x, base))]
            if has_out:
                cases.append(("forward_assigned out=, k = 2",
                              lambda: session.forward_assigned(module, ids, weights, x, base, out=y)))
            measure(cases, arguments)
    finally:
        shutil.rmtree(root)


def measure(cases, arguments):
    for name, call in cases:
        call()  # warm: the session's buffers and the JIT
        best = min(timeit.repeat(call, number=arguments.calls, repeat=arguments.repeat)) / arguments.calls
        print(f"  {name:<44} {best * 1e6:8.2f}")


if __name__ == "__main__":
    main()
