"""The MoErging engine from Python: ctypes over libmoerging, numpy arrays in and out.

    import moerging
    library = moerging.Library(["adapters/math", "adapters/code"])
    q_proj = library.module("layers.0.self_attn.q_proj")
    router = moerging.Router.arrow(q_proj, top_k=2)
    y, expert_ids, expert_weights = moerging.forward(q_proj, router, x, base=y_base)

Arrays are row-major float32 (other integer and float dtypes and layouts are converted; NaN and Inf pass
through): x is [T, d_in], base and y are [T, d_out], expert ids (any integer dtype, values within int32, -1
for an empty slot) and weights are [T, k]. Failures raise a subclass of MoErgingError carrying the library's
message; a value of the wrong type (a float or bool for an integer, a string array for floats) raises
TypeError before any call. Libraries, modules and routers may be shared by threads; a Session belongs to one
thread at a time (forward() without a session uses one per thread).

Forwards allocate their results unless given arrays to write them into: out= (y: float32, C-contiguous,
writable, [T, d_out]; it may be base itself, for y += mixture in place), expert_ids_out= (int32 [T, k]) and
expert_weights_out= (float32 [T, k]). A given array is not converted: one of another dtype, shape or layout,
read-only, or sharing memory it must not, raises InvalidArgumentError (a ValueError) naming it, and the arrays
returned are the ones given. With base None, out is zeroed first, as a new y would be (base=out adds to what
it holds); a call the library then refuses leaves out zeroed.

The library loaded is $MOERGING_LIBRARY when set, else the one the wheel bundles (moerging/_lib).
"""

from __future__ import annotations

import ctypes
import operator
import os
import threading
from typing import Any, Callable, Iterable, Mapping, Sequence, Tuple, TypeVar, Union

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._native import (
    ArrowOptions,
    BackendUnavailableError,
    EngineOptions,
    FormatError,
    InternalError,
    InvalidArgumentError,
    LibraryOptions,
    LinearRouterOptions,
    MoErgingError,
    NotFoundError,
    NotSupportedError,
    OutOfMemoryError,
    RoutingOptions,
    check,
    lib,
    native_version,
    string,
)
from ._version import __version__

__all__ = [
    "Engine", "Session", "Library", "Module", "Router", "forward", "forward_assigned", "native_version",
    "MoErgingError", "InvalidArgumentError", "NotFoundError", "FormatError", "NotSupportedError",
    "BackendUnavailableError", "OutOfMemoryError", "InternalError", "__version__",
]

Float32Array = NDArray[np.float32]
Int32Array = NDArray[np.int32]
Path = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]
Routed = Tuple[Float32Array, Int32Array, Float32Array]  # y, expert ids, expert weights

BACKENDS = ("auto", "cpu", "cuda", "opencl", "gpu-simulator")  # moe_backend values, by index
WEIGHT_PRECISIONS = ("f32", "f16", "bf16")             # moe_weight_precision
NORMALIZATIONS = ("none", "layer_norm", "l2")          # moe_normalization
SCORE_FUNCTIONS = ("identity", "absolute")             # moe_score_function


def _index(name: str, choices: Sequence[str], what: str) -> int:
    try:
        return choices.index(name)
    except ValueError:
        raise InvalidArgumentError(1, f"{what} must be one of {', '.join(choices)}, got {name!r}") from None


# The C integer types that values are passed as, with their ranges. Here a value must be an integer that fits
# its C type, since ctypes and numpy would wrap it silently (2**32 + 1 to 1, 0xFFFFFFFF to the empty slot -1); what it
# means (top-k within E, ids below E, the thread bound) the library checks and reports.
_INT32 = ("int32_t", -2**31, 2**31 - 1)
_SIZE = ("size_t", 0, 2**(8 * ctypes.sizeof(ctypes.c_size_t)) - 1)


_FLOAT32, _INT32_DTYPE = np.dtype(np.float32), np.dtype(np.int32)  # compared against faster than the types


def _integer(value: Any, what: str, ctype: Tuple[str, int, int] = _INT32) -> int:
    """value as a Python int within ctype; TypeError for anything but an integer (bools and floats included)."""
    name, low, high = ctype
    try:
        if isinstance(value, (bool, np.bool_)):  # operator.index takes them as 0 and 1
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {type(value).__name__} {value!r}") from None
    if not low <= number <= high:
        raise InvalidArgumentError(1, f"{what} is {number}, outside the {name} range [{low}, {high}]")
    return number


def _flag(value: Any, what: str) -> int:
    """value as 0 or 1; TypeError for anything but a bool (an int or a string is more likely a misplaced argument)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{what} must be a bool, got {type(value).__name__} {value!r}")
    return int(value)


def _int32_array(values: ArrayLike, what: str) -> Int32Array:
    """A C-contiguous int32 array of integer values; TypeError for another dtype, and the index of the first value
    outside int32."""
    array = np.asarray(values)
    if array.size and array.dtype.kind not in "iu":  # bools, floats, strings, objects (integers beyond 64 bits)
        raise TypeError(f"{what} must hold integers, got an array of {array.dtype}")
    fits = array.dtype.kind == "i" and array.dtype.itemsize <= 4 or array.dtype.kind == "u" and array.dtype.itemsize < 4
    outside = None if fits else (array < _INT32[1]) | (array > _INT32[2])  # (the search costs microseconds)
    if outside is not None and outside.any():
        at = np.unravel_index(np.argmax(outside), array.shape)
        raise InvalidArgumentError(1, f"{what}[{', '.join(map(str, at))}] is {array[at]}, outside the int32_t range "
                                      f"[{_INT32[1]}, {_INT32[2]}]")
    return np.ascontiguousarray(array, dtype=np.int32)


def _float32_array(values: ArrayLike, what: str) -> Float32Array:
    """A C-contiguous float32 array of integer or float values, NaN and Inf kept; TypeError for another dtype (numpy
    would parse strings and drop imaginary parts)."""
    if type(values) is np.ndarray and values.dtype == _FLOAT32 and values.ndim and values.flags.c_contiguous:
        return values  # as the library reads it already: the common case, kept quick
    array = np.asarray(values)
    if array.size and array.dtype.kind not in "iuf":
        raise TypeError(f"{what} must hold real numbers, got an array of {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float32)


def _address(array: NDArray[Any]) -> int:
    """The address of a C-contiguous array's first element, for the functions' float* and int32_t* arguments."""
    try:  # a third of the time array.ctypes.data takes, for the writable arrays it works on
        return ctypes.addressof(ctypes.c_char.from_buffer(array))  # type: ignore[arg-type]  # (a buffer all the same)
    except (TypeError, ValueError):  # read-only, or empty
        address: int = array.ctypes.data
        return address


def _given(array: Any, shape: Tuple[int, int], dtype: np.dtype[Any], what: str) -> Any:
    """array, an out= argument, if the library can write the result straight into it; InvalidArgumentError (a
    ValueError) naming it otherwise. Nothing is converted: a converted copy would not be the caller's array."""
    if not isinstance(array, np.ndarray):
        raise InvalidArgumentError(1, f"{what} must be a numpy array, got {type(array).__name__}")
    if array.dtype != dtype:
        raise InvalidArgumentError(1, f"{what} must have dtype {dtype}, got {array.dtype}")
    if array.shape != shape:
        raise InvalidArgumentError(1, f"{what} must have shape {shape}, got {array.shape}")
    flags = array.flags
    if not flags.carray:  # C-contiguous, aligned and writable, asked at once; which of them fails, only then
        if not flags.c_contiguous:
            raise InvalidArgumentError(1, f"{what} must be C-contiguous")
        if not flags.writeable:
            raise InvalidArgumentError(1, f"{what} is read-only")
        raise InvalidArgumentError(1, f"{what} is not aligned to its {array.itemsize}-byte elements")
    return array


def _apart(what: str, array: NDArray[Any], address: int, others: Iterable[Tuple[str, NDArray[Any] | None, int]]) -> None:
    """Refuses a given output array that shares memory with another array of the call: the library copies the
    decision out last and does not check it, and out is zeroed (base None) before the library could refuse it."""
    end = address + array.nbytes
    for other, other_array, other_address in others:
        if other_array is not None and address < other_address + other_array.nbytes and other_address < end:
            raise InvalidArgumentError(1, f"{what} overlaps {other}; it must be a separate array")


def _out_apart(y: Float32Array, x: NDArray[Any], base: Float32Array | None) -> None:
    """out must not share memory with x, nor with base unless it is base itself (y += mixture in place)."""
    ya = _address(y)
    others: list[Tuple[str, NDArray[Any] | None, int]] = [("x", x, _address(x))]
    if base is not None and not (_address(base) == ya and base.nbytes == y.nbytes):
        others.append(("base", base, _address(base)))
    _apart("out", y, ya, others)


def _output(tokens: int, module: Module, base: ArrayLike | None, out: Any) -> Tuple[Float32Array, Float32Array | None]:
    """y [T, d_out] (out, checked, or a new array) and the base to pass: base given, the library writes base + mixture
    into y (base may be out itself: then it adds in place); None, the mixture is added to y in place, so a new y is
    zeros and out must be zeroed before the call (after every check, so that a refused call leaves it as it was)."""
    shape = (tokens, module.output_dim)
    if base is not None:
        base = _matrix(base, module.output_dim, "base")
        if base.shape[0] != tokens:
            raise InvalidArgumentError(1, f"base has {base.shape[0]} rows but x has {tokens}")
    if out is not None:
        return _given(out, shape, _FLOAT32, "out"), base
    return (np.zeros(shape, dtype=np.float32) if base is None else np.empty(shape, dtype=np.float32)), base


def _path_list(directories: Iterable[Path]) -> list[Path]:
    """The directories as a list (an iterator is read once); a single path is refused, not split into characters."""
    if isinstance(directories, (str, bytes, os.PathLike)):
        raise TypeError(f"directories must be a list of paths, got the single path {directories!r}")
    return list(directories)


def _paths(directories: Sequence[Path]) -> Tuple[Any, int]:
    """A C array of UTF-8 paths (str, bytes or os.PathLike each) from a list."""
    encoded = []
    for i, path in enumerate(directories):
        if not isinstance(path, (str, bytes, os.PathLike)):
            raise TypeError(f"directories[{i}] must be a path, got {type(path).__name__} {path!r}")
        raw = os.fsencode(path)
        if b"\0" in raw:  # C would read the path only up to it
            raise InvalidArgumentError(1, f"directories[{i}] is {path!r}, which holds a NUL character")
        encoded.append(raw)
    return (ctypes.c_char_p * len(encoded))(*encoded), len(encoded)


def _real(value: Any, what: str) -> float:
    """A float for a C float or double argument; bools and strings are refused rather than read as numbers."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{what} must be a real number, got {type(value).__name__} {value!r}")
    return float(value)


def _names(names: Any, count: int) -> Any:
    """A C array of count UTF-8 expert names, a None entry (named after its directory) kept as NULL; the library
    reads count entries, so fewer would be read past."""
    try:
        if isinstance(names, (str, bytes)):  # list() would split it into characters
            raise TypeError
        names = list(names)
    except TypeError:
        raise TypeError(f"names must be a list of names, got {type(names).__name__} {names!r}") from None
    if len(names) != count:
        raise InvalidArgumentError(1, f"{len(names)} names were given for {count} directories; give one per "
                                      f"directory (None for automatic)")
    encoded = []
    for i, name in enumerate(names):
        if name is not None and not isinstance(name, str):
            raise TypeError(f"names[{i}] must be a string or None, got {type(name).__name__} {name!r}")
        if name is not None and "\0" in name:  # C would read the name only up to it
            raise InvalidArgumentError(1, f"names[{i}] is {name!r}, which holds a NUL character")
        encoded.append(None if name is None else name.encode("utf-8"))
    return (ctypes.c_char_p * count)(*encoded)


def _routing_options(top_k: int | None, temperature: float) -> Any:
    """moe_routing_options; top_k None is the router's own default."""
    k, t = 0 if top_k is None else _integer(top_k, "top_k"), _real(temperature, "temperature")
    options = RoutingOptions()
    check(lib.moe_routing_default_options(ctypes.byref(options), ctypes.sizeof(options)))
    options.top_k, options.temperature = k, t
    return ctypes.byref(options)


def _matrix(values: ArrayLike, columns: int, what: str) -> Float32Array:
    """A C-contiguous float32 [rows, columns] array, converted if needed; a clear error for a wrong shape."""
    array = _float32_array(values, what)
    if array.ndim != 2 or array.shape[1] != columns:
        raise InvalidArgumentError(1, f"{what} must be a 2-D array with {columns} columns, got shape {array.shape}")
    return array


_Self = TypeVar("_Self", bound="_Handle")


class _Handle:
    """Owns one handle; close() frees it (once), and so does garbage collection."""

    _free: Callable[[int], int]

    def __init__(self, handle: int | None) -> None:
        self._handle = handle

    @property
    def handle(self) -> int:
        if self._handle is None:
            raise InvalidArgumentError(1, f"this {type(self).__name__} is closed")
        return self._handle

    def close(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            check(type(self)._free(handle))

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # at interpreter exit, or an engine whose sessions outlive it: nothing to report to
            pass


class Engine(_Handle):
    """A backend ("auto", "cpu", "cuda", "opencl", "gpu-simulator") and its worker threads. Close it after its sessions.

    cpu_threads: the threads a CPU forward uses, the caller's included; 0 uses every processor. At most 4 x the
    processor count (.NET's Environment.ProcessorCount); more, or a negative count, is an InvalidArgumentError.
    weight_precision: how the engine stores the experts' factors and the routers' prototypes: "f32" (default),
    "bf16" or "f16", each value rounded once and widened to float32 for the
    arithmetic. Give the Library the same one: the engine converts factors of another precision into a copy of its
    own (the CPU engine copies every expert it runs into panels for its kernels in any case)."""

    _free = lib.moe_engine_free

    def __init__(self, backend: str = "auto", cpu_threads: int = 0, weight_precision: str = "f32") -> None:
        chosen, threads = _index(backend, BACKENDS, "backend"), _integer(cpu_threads, "cpu_threads")
        precision = _index(weight_precision, WEIGHT_PRECISIONS, "weight_precision")
        options = EngineOptions()
        check(lib.moe_engine_default_options(ctypes.byref(options), ctypes.sizeof(options)))
        options.backend, options.cpu_threads, options.weight_precision = chosen, threads, precision
        handle = ctypes.c_void_p()
        check(lib.moe_engine_create(ctypes.byref(options), ctypes.byref(handle)))
        super().__init__(handle.value)

    @property
    def backend(self) -> str:
        value = ctypes.c_int32()
        check(lib.moe_engine_info(self.handle, ctypes.byref(value), None, 0, None))
        return BACKENDS[value.value]

    @property
    def backend_reason(self) -> str:
        return string(lib.moe_engine_info, self.handle, None)

    def session(self) -> Session:
        return Session(self)


class Session(_Handle):
    """One thread's workspace for forwards; reuse it (warm calls allocate nothing in the engine)."""

    _free = lib.moe_session_free

    def __init__(self, engine: Engine) -> None:
        handle = ctypes.c_void_p()
        check(lib.moe_session_create(engine.handle, ctypes.byref(handle)))
        super().__init__(handle.value)
        self.engine = engine  # the engine must outlive the session

    def forward(self, module: Module, router: Router, x: ArrayLike, base: ArrayLike | None = None, *,
                out: Float32Array | None = None, expert_ids_out: Int32Array | None = None,
                expert_weights_out: Float32Array | None = None) -> Routed:
        """Routes x [T, d_in] with router and returns (y, expert_ids, expert_weights): y = base + mixture
        [T, d_out] (base None: zeros), ids int32 and weights float32 [T, k].

        out, expert_ids_out, expert_weights_out: arrays to write y, the ids and the weights into (and return)
        instead of new ones; out may be base itself (y += mixture in place)."""
        x = _matrix(x, module.input_dim, "x")
        tokens, k = x.shape[0], router._top_k  # the router's k is fixed at creation: no call to ask it
        y, base = _output(tokens, module, base, out)
        if out is not None:
            _out_apart(y, x, base)
        xa, ya = _address(x), _address(y)
        ba = None if base is None else _address(base)
        if expert_ids_out is None:
            ids = np.empty((tokens, k), dtype=np.int32)
        else:
            ids = _given(expert_ids_out, (tokens, k), _INT32_DTYPE, "expert_ids_out")
        if expert_weights_out is None:
            weights = np.empty((tokens, k), dtype=np.float32)
        else:
            weights = _given(expert_weights_out, (tokens, k), _FLOAT32, "expert_weights_out")
        ia, wa = _address(ids), _address(weights)
        if expert_ids_out is not None:
            _apart("expert_ids_out", ids, ia, (("x", x, xa), ("base", base, ba or 0), ("out", y, ya),
                                               ("expert_weights_out", weights, wa)))
        if expert_weights_out is not None:
            _apart("expert_weights_out", weights, wa, (("x", x, xa), ("base", base, ba or 0), ("out", y, ya)))
        if base is None and out is not None:
            y.fill(0)
        check(lib.moe_forward(self.handle, module.handle, router.handle, xa, x.size, ba, ya, y.size, ia, wa,
                              ids.size))
        return y, ids, weights

    def forward_assigned(self, module: Module, expert_ids: ArrayLike, expert_weights: ArrayLike, x: ArrayLike,
                         base: ArrayLike | None = None, *, out: Float32Array | None = None) -> Float32Array:
        """Batched multi-tenant LoRA: the host gives each token k slots of (expert id, weight), [T, k] each
        (id -1: empty slot). Returns y = base + mixture [T, d_out], in out when given (which may be base itself)."""
        x = _matrix(x, module.input_dim, "x")
        ids = _int32_array(expert_ids, "expert_ids")
        if ids.ndim != 2:
            raise InvalidArgumentError(1, f"expert_ids must be a 2-D array [T, k], got shape {ids.shape}")
        weights = _float32_array(expert_weights, "expert_weights")
        if weights.shape != ids.shape:
            raise InvalidArgumentError(1, f"expert_weights has shape {weights.shape}, expert_ids {ids.shape}")
        y, base = _output(x.shape[0], module, base, out)
        if out is not None:
            _out_apart(y, x, base)
        if base is None and out is not None:
            y.fill(0)
        check(lib.moe_forward_assigned(self.handle, module.handle, _address(ids), _address(weights), ids.size,
                                       ids.shape[1], _address(x), x.size, None if base is None else _address(base),
                                       _address(y), y.size))
        return y


class Library(_Handle):
    """Experts loaded from PEFT LoRA adapter directories, numbered in the order given.

    directories: a list of directories, or a dict {name: directory} naming each expert (in the dict's order).
    names: one name per directory, or None for one named after its directory (same-named directories take their
    parents' names: "run1/adapter", "run2/adapter"). strict: refuse experts whose configs name different base
    models (InvalidArgumentError) instead of warning. What the library has to say about the experts (different
    base models, modules saved whole that LoRA forwards do not apply, disagreeing arrow_config values) is written
    once to the process's stderr (file descriptor 2, not sys.stderr), each line starting "moerging: warning: ".
    weight_precision: how the factors are held in memory, "f32" (default), "bf16" or "f16" (the engines' precision,
    see Engine); a factor stored in the file in that format keeps its bits, any other is rounded once."""

    _free = lib.moe_library_free

    def __init__(self, directories: Iterable[Path] | Mapping[str, Path], names: Iterable[str | None] | None = None,
                 strict: bool = False, weight_precision: str = "f32") -> None:
        if isinstance(directories, Mapping):
            if names is not None:
                raise TypeError("names cannot be given with a dict of directories: its keys are the names")
            names, directories = list(directories), list(directories.values())
        self.directories = _path_list(directories)  # the routers built from the experts' files read them again
        paths = _paths(self.directories)
        flag = _flag(strict, "strict")
        precision = _index(weight_precision, WEIGHT_PRECISIONS, "weight_precision")
        encoded = None if names is None else _names(names, len(self.directories))
        options = LibraryOptions()
        check(lib.moe_library_default_options(ctypes.byref(options), ctypes.sizeof(options)))
        options.names, options.strict, options.weight_precision = encoded, flag, precision
        handle = ctypes.c_void_p()
        check(lib.moe_library_load_with_options(*paths, ctypes.byref(options),
                                                ctypes.byref(handle)))
        super().__init__(handle.value)

    def _counts(self) -> Tuple[int, int]:
        experts, modules = ctypes.c_size_t(), ctypes.c_size_t()
        check(lib.moe_library_info(self.handle, ctypes.byref(experts), ctypes.byref(modules)))
        return experts.value, modules.value

    @property
    def expert_count(self) -> int:
        return self._counts()[0]

    @property
    def expert_names(self) -> list[str]:
        """The experts' names: those given, else their directories' (see Library)."""
        return [string(lib.moe_library_expert_name, self.handle, e) for e in range(self.expert_count)]

    @property
    def modules(self) -> list[Module]:
        """Every adapted module, in ordinal name order."""
        found = []
        for index in range(self._counts()[1]):
            handle = ctypes.c_void_p()
            check(lib.moe_library_module(self.handle, index, ctypes.byref(handle)))
            found.append(Module(self, handle.value))
        return found

    def module(self, name: str) -> Module:
        """The module named name, or ending with "." + name; NotFoundError if none, InvalidArgumentError if several."""
        handle = ctypes.c_void_p()
        check(lib.moe_library_find_module(self.handle, name.encode("utf-8"), ctypes.byref(handle)))
        return Module(self, handle.value)


class Module:
    """One adapted module of a library; valid while its library is open (it keeps the library alive)."""

    input_dim: int
    output_dim: int
    expert_count: int
    max_rank: int

    def __init__(self, library: Library, handle: int | None) -> None:
        self.library = library
        self.handle = handle
        dims = [ctypes.c_size_t() for _ in range(4)]
        check(lib.moe_module_info(handle, *[ctypes.byref(d) for d in dims]))
        self.input_dim, self.output_dim, self.expert_count, self.max_rank = (d.value for d in dims)

    @property
    def name(self) -> str:
        return string(lib.moe_module_name, self.handle)

    def __repr__(self) -> str:
        return f"Module({self.name!r}, d_in={self.input_dim}, d_out={self.output_dim})"


class Router(_Handle):
    """Decides each token's experts and weights. Build one with uniform, fixed, arrow, linear, phatgoose,
    centroid or classifier."""

    _free = lib.moe_router_free

    def __init__(self, handle: int | None) -> None:
        super().__init__(handle)
        # Routers are immutable, so E and k are asked once here rather than on every forward.
        experts, k = ctypes.c_size_t(), ctypes.c_size_t()
        check(lib.moe_router_info(handle, ctypes.byref(experts), ctypes.byref(k)))
        self._expert_count, self._top_k = experts.value, k.value

    @classmethod
    def _create(cls, function: Callable[..., int], *arguments: Any) -> Router:
        handle = ctypes.c_void_p()
        check(function(*arguments, ctypes.byref(handle)))
        return cls(handle.value)

    @classmethod
    def uniform(cls, expert_count: int) -> Router:
        """Dense: every expert with weight 1/E."""
        return cls._create(lib.moe_router_create_uniform, _integer(expert_count, "expert_count", _SIZE))

    @classmethod
    def fixed(cls, weights: ArrayLike) -> Router:
        """Dense task-level weights, one per expert."""
        w = _float32_array(weights, "weights").ravel()
        return cls._create(lib.moe_router_create_fixed, _address(w), w.size)

    @classmethod
    def arrow(cls, module: Module, top_k: int | None = None, temperature: float | None = None) -> Router:
        """Arrow: |x . p_e| against each expert's top right singular vector at the module; top-k; softmax.
        top_k and temperature None take the library's defaults: its experts' arrow_config values when they agree,
        else top-3 (at most E) and temperature 1."""
        k = 0 if top_k is None else _integer(top_k, "top_k")
        t = None if temperature is None else _real(temperature, "temperature")
        options = ArrowOptions()
        check(lib.moe_arrow_default_options(ctypes.byref(options), ctypes.sizeof(options)))
        options.top_k = k  # 0, like the default temperature, is the library's default
        if t is not None:
            options.temperature = t
        return cls._create(lib.moe_router_create_arrow, module.handle, ctypes.byref(options))

    @classmethod
    def linear(cls, prototypes: ArrayLike, top_k: int = 1, temperature: float = 1.0, normalization: str = "none",
               score: str = "identity", bias: ArrayLike | None = None) -> Router:
        """score_e = f(norm(x) . p_e) / temperature + bias_e over prototypes [E, d_in]; top-k; softmax.
        normalization: "none", "layer_norm" or "l2"; score: "identity" or "absolute"."""
        p = _float32_array(prototypes, "prototypes")
        if p.ndim != 2:
            raise InvalidArgumentError(1, f"prototypes must be a 2-D array [E, d_in], got shape {p.shape}")
        k, t = _integer(top_k, "top_k"), _real(temperature, "temperature")
        b = None if bias is None else _float32_array(bias, "bias").ravel()
        norm = _index(normalization, NORMALIZATIONS, "normalization")
        score_function = _index(score, SCORE_FUNCTIONS, "score")
        options = LinearRouterOptions()
        check(lib.moe_linear_router_default_options(ctypes.byref(options), ctypes.sizeof(options)))
        options.top_k, options.temperature = k, t
        options.normalization, options.score_function = norm, score_function
        if b is not None:
            options.bias, options.bias_count = _address(b), b.size
        return cls._create(lib.moe_router_create_linear, _address(p), p.size, p.shape[0], p.shape[1],
                           ctypes.byref(options))

    @classmethod
    def phatgoose(cls, module: Module, top_k: int | None = None, temperature: float = 1.0) -> Router:
        """PHATGOOSE: LayerNorm(x) . LayerNorm(g_e) / sqrt(d_in) against each expert's gate, read from
        phatgoose_gates.safetensors in its directory; top-k (default 2); softmax."""
        return cls._create(lib.moe_router_create_phatgoose, module.handle, *_paths(module.library.directories),
                           _routing_options(top_k, temperature))

    @classmethod
    def centroid(cls, module: Module, top_k: int | None = None, temperature: float = 1.0) -> Router:
        """x . c_e / (|c_e| sqrt(d_in)) against each expert's centroid, read from centroids.safetensors in its
        directory; top-k (default: all experts); softmax."""
        return cls._create(lib.moe_router_create_centroid, module.handle, *_paths(module.library.directories),
                           _routing_options(top_k, temperature))

    @classmethod
    def classifier(cls, path: Path, top_k: int | None = None, temperature: float = 1.0) -> Router:
        """A classifier saved by `moerge train-router` (weight [E, d_in], bias [E]): W x + b; top-k (default:
        all experts); softmax. It routes any module with the same E and d_in."""
        return cls._create(lib.moe_router_create_classifier, os.fsencode(path),
                           _routing_options(top_k, temperature))

    @property
    def expert_count(self) -> int:
        self.handle  # a closed router has none
        return self._expert_count

    @property
    def top_k(self) -> int:
        """Slots per token in this router's decisions (E for dense routers)."""
        self.handle  # a closed router has none
        return self._top_k


_default = threading.local()
_default_engine: Engine | None = None
_default_lock = threading.Lock()


def _session(session: Session | None) -> Session:
    """The given session, or this thread's default one on a shared default engine (backend "auto")."""
    global _default_engine
    if session is not None:
        return session
    if getattr(_default, "session", None) is None:
        with _default_lock:
            if _default_engine is None:
                _default_engine = Engine()
        _default.session = _default_engine.session()
    default: Session = _default.session
    return default


def forward(module: Module, router: Router, x: ArrayLike, base: ArrayLike | None = None,
            session: Session | None = None, *, out: Float32Array | None = None,
            expert_ids_out: Int32Array | None = None, expert_weights_out: Float32Array | None = None) -> Routed:
    """Session.forward on the given session, or on this thread's default one."""
    return _session(session).forward(module, router, x, base, out=out, expert_ids_out=expert_ids_out,
                                     expert_weights_out=expert_weights_out)


def forward_assigned(module: Module, expert_ids: ArrayLike, expert_weights: ArrayLike, x: ArrayLike,
                     base: ArrayLike | None = None, session: Session | None = None, *,
                     out: Float32Array | None = None) -> Float32Array:
    """Session.forward_assigned on the given session, or on this thread's default one."""
    return _session(session).forward_assigned(module, expert_ids, expert_weights, x, base, out=out)
