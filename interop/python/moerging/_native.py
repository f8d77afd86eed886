"""ctypes declarations of moerging.h, the shared library's loading, and status codes turned into exceptions."""

import ctypes
import os
from ctypes import POINTER, c_char, c_char_p, c_float, c_int32, c_size_t, c_uint32, c_void_p
from typing import Any, Callable, Dict, Mapping, Optional, Type

from ._abi import ABI_VERSION, LIBRARY_NAME


class MoErgingError(Exception):
    """A call into libmoerging.so failed; ``status`` is the moe_status, ``str(error)`` the library's message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class InvalidArgumentError(MoErgingError, ValueError):
    """MOE_ERROR_INVALID_ARGUMENT: a bad handle, size or value."""


class NotFoundError(MoErgingError, LookupError):
    """MOE_ERROR_NOT_FOUND: no such module, directory or file."""


class FormatError(MoErgingError, ValueError):
    """MOE_ERROR_FORMAT: a malformed adapter_config.json or safetensors file."""


class NotSupportedError(MoErgingError, NotImplementedError):
    """MOE_ERROR_NOT_SUPPORTED: a LoRA variant the engine lacks, or option fields this library does not know."""


class BackendUnavailableError(MoErgingError, RuntimeError):
    """MOE_ERROR_BACKEND_UNAVAILABLE: the backend asked for is absent, or the .NET runtime cannot start."""


class OutOfMemoryError(MoErgingError, MemoryError):
    """MOE_ERROR_OUT_OF_MEMORY."""


class InternalError(MoErgingError, RuntimeError):
    """MOE_ERROR_INTERNAL: anything else; the message names the cause."""


ERRORS: Dict[int, Type[MoErgingError]] = {
    1: InvalidArgumentError,
    2: NotFoundError,
    3: FormatError,
    4: NotSupportedError,
    5: BackendUnavailableError,
    6: OutOfMemoryError,
    7: InternalError,
}


class EngineOptions(ctypes.Structure):
    _fields_ = [("struct_size", c_uint32), ("backend", c_int32), ("cpu_threads", c_int32), ("weight_precision", c_int32)]


class LibraryOptions(ctypes.Structure):
    _fields_ = [("struct_size", c_uint32), ("names", POINTER(c_char_p)), ("strict", c_int32), ("lazy", c_int32),
                ("quiet", c_int32), ("weight_precision", c_int32)]


class ArrowOptions(ctypes.Structure):
    _fields_ = [("struct_size", c_uint32), ("top_k", c_int32), ("temperature", c_float)]


class LinearRouterOptions(ctypes.Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("top_k", c_int32),
        ("temperature", c_float),
        ("normalization", c_int32),
        ("score_function", c_int32),
        ("bias", c_void_p),  # const float*, given as an address like the arrays
        ("bias_count", c_size_t),
    ]


class RoutingOptions(ctypes.Structure):
    _fields_ = [("struct_size", c_uint32), ("top_k", c_int32), ("temperature", c_float)]


# Where a wheel puts the library (build_wheel.py bundles it there with its managed side, MoErging.Interop.so).
BUNDLED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_lib", LIBRARY_NAME)


def library_path(environment: Mapping[str, str] = os.environ, bundled: str = BUNDLED) -> str:
    """The library to load: $MOERGING_LIBRARY when set, else the one a wheel bundles; ImportError naming both ways
    when there is neither."""
    configured = environment.get("MOERGING_LIBRARY")
    if configured:
        return configured
    if os.path.isfile(bundled):
        return bundled
    raise ImportError(
        f"the moerging package has no libmoerging to load: MOERGING_LIBRARY is not set and {bundled} is absent. "
        f"Either install the wheel, which bundles the library (build it with 'dotnet cake --target=Wheel', then "
        f"'pip install artifacts/python/moerging-*.whl'), or set MOERGING_LIBRARY to a libmoerging.so, such as "
        f"artifacts/native/libmoerging.so from 'dotnet cake --target=Native' (the hosted build, with the GPU "
        f"backends; it needs the .NET runtime)")


def _load() -> ctypes.CDLL:
    path = library_path()
    try:
        return ctypes.CDLL(path)
    except OSError as error:
        source = "MOERGING_LIBRARY" if path != BUNDLED else "the library the wheel bundles"
        raise ImportError(f"{path} ({source}) could not be loaded: {error}") from None


lib = _load()

_handle = c_void_p
_out = POINTER(c_void_p)
_size_out = POINTER(c_size_t)
# A float* or int32_t*: the package passes numpy arrays' addresses (ints), which a typed pointer would take a
# conversion costing microseconds per array to accept.
_array = c_void_p

_SIGNATURES: Dict[str, Any] = {
    "moe_abi_version": (c_uint32, []),
    "moe_last_error": (c_char_p, []),
    "moe_engine_default_options": (c_int32, [POINTER(EngineOptions), c_size_t]),
    "moe_library_default_options": (c_int32, [POINTER(LibraryOptions), c_size_t]),
    "moe_arrow_default_options": (c_int32, [POINTER(ArrowOptions), c_size_t]),
    "moe_linear_router_default_options": (c_int32, [POINTER(LinearRouterOptions), c_size_t]),
    "moe_routing_default_options": (c_int32, [POINTER(RoutingOptions), c_size_t]),
    "moe_engine_create": (c_int32, [POINTER(EngineOptions), _out]),
    "moe_engine_info": (c_int32, [_handle, POINTER(c_int32), POINTER(c_char), c_size_t, _size_out]),
    "moe_engine_free": (c_int32, [_handle]),
    "moe_session_create": (c_int32, [_handle, _out]),
    "moe_session_free": (c_int32, [_handle]),
    "moe_library_load_with_options": (c_int32, [POINTER(c_char_p), c_size_t, POINTER(LibraryOptions), _out]),
    "moe_library_info": (c_int32, [_handle, _size_out, _size_out]),
    "moe_library_expert_name": (c_int32, [_handle, c_size_t, POINTER(c_char), c_size_t, _size_out]),
    "moe_library_module": (c_int32, [_handle, c_size_t, _out]),
    "moe_library_find_module": (c_int32, [_handle, c_char_p, _out]),
    "moe_library_free": (c_int32, [_handle]),
    "moe_module_info": (c_int32, [_handle, _size_out, _size_out, _size_out, _size_out]),
    "moe_module_name": (c_int32, [_handle, POINTER(c_char), c_size_t, _size_out]),
    "moe_router_create_uniform": (c_int32, [c_size_t, _out]),
    "moe_router_create_fixed": (c_int32, [_array, c_size_t, _out]),
    "moe_router_create_arrow": (c_int32, [_handle, POINTER(ArrowOptions), _out]),
    "moe_router_create_linear": (c_int32, [_array, c_size_t, c_size_t, c_size_t, POINTER(LinearRouterOptions),
                                           _out]),
    "moe_router_create_phatgoose": (c_int32, [_handle, POINTER(c_char_p), c_size_t, POINTER(RoutingOptions), _out]),
    "moe_router_create_centroid": (c_int32, [_handle, POINTER(c_char_p), c_size_t, POINTER(RoutingOptions), _out]),
    "moe_router_create_classifier": (c_int32, [c_char_p, POINTER(RoutingOptions), _out]),
    "moe_router_info": (c_int32, [_handle, _size_out, _size_out]),
    "moe_router_free": (c_int32, [_handle]),
    "moe_forward": (c_int32, [_handle, _handle, _handle, _array, c_size_t, _array, _array, c_size_t, _array,
                              _array, c_size_t]),
    "moe_forward_assigned": (c_int32, [_handle, _handle, _array, _array, c_size_t, c_int32, _array, c_size_t,
                                       _array, _array, c_size_t]),
}

for _name, (_restype, _argtypes) in _SIGNATURES.items():
    _function = getattr(lib, _name)
    _function.restype = _restype
    _function.argtypes = _argtypes

if lib.moe_abi_version() != ABI_VERSION:
    raise ImportError(f"libmoerging.so speaks ABI {lib.moe_abi_version()}; this package speaks ABI {ABI_VERSION}")

# moe_version came later than ABI 2's first libraries: one without it is older, not broken.
_moe_version = getattr(lib, "moe_version", None)
if _moe_version is not None:
    _moe_version.restype, _moe_version.argtypes = c_char_p, []


def native_version() -> Optional[str]:
    """The version the loaded library was built as (its moe_version()), or None for a library older than that
    function."""
    return None if _moe_version is None else _moe_version().decode("utf-8")


def check(status: int) -> None:
    """Raises the exception for a moe_status other than MOE_OK, with the calling thread's message."""
    if status != 0:
        message = lib.moe_last_error().decode("utf-8", "replace")
        raise ERRORS.get(status, MoErgingError)(status, message)


def string(function: Callable[..., int], *arguments: Any) -> str:
    """Calls a moe_* function that copies a string out (buffer, capacity, length last) and returns the string."""
    length = c_size_t()
    check(function(*arguments, None, 0, ctypes.byref(length)))
    buffer = ctypes.create_string_buffer(length.value + 1)
    check(function(*arguments, buffer, len(buffer), ctypes.byref(length)))
    return buffer.value.decode("utf-8")
