"""Unpickling a stranger's file without running it: an opcode check, then inert stand-ins.

A pickle is a program for a small stack machine. Its GLOBAL opcodes name importable
objects and its REDUCE opcodes call them, so the CIFAR reader (``convnet.data.cifar``)
and the PyTorch reader (``convnet.io.torch_file``) give ``pickle.Unpickler`` a
``find_class`` that admits a few names, each mapped to an object of ours. Two more
things make that safe, and live here:

``check_pickle(data)`` walks the opcodes (``pickletools.genops``) before anything is
built, and refuses what would make CPython's C unpickler allocate or recurse without
bound on a small file:
    a length field longer than the bytes left    BINBYTES allocates the declared length
                                                 before reading: 11 bytes can ask for 16 GiB
    a memo index past the entries stored so far  the memo array grows to twice the index
    tuples nested deeper than limits.MAX_DEPTH   hashing a deep tuple (a dict key) recurses
                                                 in C: a million levels overflow the stack
    more than MAX_OPS opcodes                    the check's own time, and the stack's memory
The depth of a tuple is tracked through a simulation of the stack and the memo (each
opcode's pops and pushes are listed in pickletools). Lists and dicts may nest deeper
here: their hash is never taken, and each reader caps their depth as it walks the result.

``Inert`` is what an admitted name unpickles to: an object the pickle cannot change. A
BUILD opcode sets state on whatever object is on the stack; on a shared object, such as
a module-level function (``__defaults__``), the change would outlive the load and
poison every later one. An ``Inert`` object refuses BUILD and attribute writes, and
``Global`` wraps a function of ours so that only the wrapper is reachable.

>>> check_pickle(pickle.dumps({"a": (1, 2)}, protocol=2))            # doctest: +SKIP
>>> REBUILD = Global("torch._utils._rebuild_tensor_v2", _rebuild_tensor_v2)   # doctest: +SKIP
"""

from __future__ import annotations

import pickletools
import reprlib

from convnet import limits

__all__ = ["Refused", "Inert", "Global", "check_pickle", "show", "MAX_OPS"]

MAX_OPS = 1 << 20       # opcodes in one pickle (1.5 s to check); CIFAR-100 train: ~500,000

_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"})


def _effect(op):
    """(items popped below the MARK or None when no MARK is popped, items popped, items
    pushed, pushes a MARK, builds a tuple) of an opcode, from pickletools' stack lists."""
    before, after, mark = op.stack_before, op.stack_after, pickletools.markobject
    below = before.index(mark) if mark in before else None
    return (below, len(before), sum(item is not mark for item in after), mark in after,
            op.name in ("EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3"))


_EFFECTS = {op.name: _effect(op) for op in pickletools.opcodes}


class _Short(reprlib.Repr):
    """reprlib's short repr, with ints capped too (repr refuses ints past 4,300 digits)."""

    def __init__(self):
        super().__init__()
        self.maxstring, self.maxother, self.maxtuple = 100, 100, 10

    def repr_int(self, x, level):
        return repr(x) if x.bit_length() <= 64 else f"<a {x.bit_length()}-bit int>"


def show(value):
    """A value from a file, for a message: short however large, deep or odd it is."""
    return _Short().repr(value)


class Refused(ValueError):
    """A pickle asks for something a reader does not allow; the reader adds the file name."""


class Inert:
    """An object a pickle may reach but not change: BUILD and attribute writes are refused.

    Subclasses list their fields in ``__slots__``; ``__init__`` takes them in that order.
    """

    __slots__ = ()

    def __init__(self, *values):
        for name, value in zip(self.__slots__, values, strict=True):
            object.__setattr__(self, name, value)

    def __setstate__(self, state):      # the BUILD opcode
        raise Refused(f"the pickle sets state on {self!r}, which the format never does")

    def __setattr__(self, name, value):
        raise Refused(f"the pickle sets an attribute on {self!r}, which the format never does")

    def __delattr__(self, name):
        raise Refused(f"the pickle deletes an attribute of {self!r}")


class Global(Inert):
    """An admitted global that is called (REDUCE): its name and the function of ours it runs."""

    __slots__ = ("name", "func")

    def __call__(self, *args):
        return self.func(*args)

    def __repr__(self):
        return self.name


def check_pickle(data):
    """Refuse, before unpickling, a pickle that would allocate or recurse without bound.

    Args:
        data: the whole pickle, bytes.

    Raises Refused (a ValueError; the caller names the file) for a truncated or unknown
    opcode, a length or frame past the end, a memo index past the entries stored, a stack
    underflow, tuples nested deeper than limits.MAX_DEPTH, or more than MAX_OPS opcodes.
    See the module docstring for why each matters.
    """
    stack, marks, memo = [], [], {}     # tuple depth per stack item; MARK positions; memo
    try:
        for count, (op, arg, pos) in enumerate(pickletools.genops(data), 1):
            if count > MAX_OPS:
                raise Refused(f"more than {MAX_OPS:,} pickle opcodes "
                              "(convnet.safe_pickle.MAX_OPS)")
            _step(op, arg, pos, len(data), stack, marks, memo)
    except Refused:
        raise
    except Exception as err:    # from genops: unknown opcode, short argument, bad number
        raise Refused(f"bad opcode stream ({type(err).__name__}: {str(err)[:200]})") from None


def _step(op, arg, pos, size, stack, marks, memo):
    """One opcode's effect on the simulated stack (tuple depths) and memo."""
    name, fence = op.name, (marks[-1] if marks else 0)
    if name in _GETS:
        if arg not in memo:
            raise Refused(f"pickle memo entry {arg} at byte {pos} was never stored")
        stack.append(memo[arg])
        return
    if name in _PUTS:
        index = len(memo) if name == "MEMOIZE" else arg
        if index > len(memo):
            raise Refused(f"pickle memo entry {index} at byte {pos} skips past the "
                          f"{len(memo)} entries stored so far (a pickler numbers them in order)")
        if len(stack) <= fence:
            raise Refused(f"pickle opcode {name} at byte {pos} stores from an empty stack")
        memo[index] = stack[-1]
        return
    if name == "FRAME" and arg > size - pos:
        raise Refused(f"pickle frame at byte {pos} declares {arg} bytes, past the end")
    if name == "POP" and marks and fence == len(stack):     # POP on a MARK drops the mark
        marks.pop()
        return
    below, count, pushed, pushes_mark, is_tuple = _EFFECTS[name]
    if below is not None:           # pop down to the MARK, then the items below it
        if not marks:
            raise Refused(f"pickle opcode {name} at byte {pos} has no MARK")
        fence, count = marks.pop(), below
        popped = stack[fence:]
        del stack[fence:]
        fence = marks[-1] if marks else 0
    else:
        popped = []
    if len(stack) - count < fence:
        raise Refused(f"pickle opcode {name} at byte {pos} pops from an empty stack")
    if count:
        popped += stack[-count:]
        del stack[-count:]
    # Whatever an opcode builds may hold what it popped: a tuple is one level deeper.
    depth = max(popped, default=0) + is_tuple
    if depth > limits.MAX_DEPTH:
        raise Refused(f"tuples nested deeper than {limits.MAX_DEPTH} levels at byte {pos} "
                      "(convnet.limits.MAX_DEPTH)")
    if pushes_mark:
        marks.append(len(stack))
    stack.extend([depth] * pushed)
