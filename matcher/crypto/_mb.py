"""ctypes binding to Intel's multi-buffer ``libcrypto_mb``: eight X25519 per call on AVX-512 IFMA.

The wheels ``ipp-crypto`` and ``intel-cmplr-lib-rt`` drop their shared objects into
``<prefix>/lib``. libcrypto_mb links against the Intel compiler runtime (libintlc, libirng, libimf,
libsvml) without an rpath, so those are preloaded with RTLD_GLOBAL first.

Per-element Python work is what limits the rate, so a chunk is handled with numpy: one array of
lane pointers for the whole chunk, one foreign call per eight elements, and the tail padded with
the base point. Validation of inputs and outputs is the caller's (``group``).
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

import numpy as np

LANES = 8
_SIZE = 32
_MBX_ALGO_X25519 = 4          # enum MBX_ALGO in crypto_mb/cpu_features.h
_MBX_STATUS_LOW_ORDER_ERR = 4  # crypto_mb/status.h; 4 bits of status per lane
_RUNTIME_LIBS = ("libintlc.so.5", "libirng.so", "libimf.so", "libsvml.so")
_LIBRARY_NAMES = ("libcrypto_mb.so.13", "libcrypto_mb.so")
_PADDING_POINT = (9).to_bytes(_SIZE, "little")

_x25519_mb8 = None      # the foreign function once loaded
_load_error: str | None = None


def unavailable_reason() -> str | None:
    """None when the mb8 backend works on this machine, else why not."""
    _load()
    return _load_error


def x25519(scalar: bytes | np.ndarray, points: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """X25519(scalar, u) for each row of the (n, 32) uint8 array ``points``; ``scalar`` may also be
    an (n, 32) uint8 array, a scalar for each row (each lane takes its own key).

    Returns the (n, 32) outputs and the element indices whose lane reported a low-order input.
    Raises RuntimeError for any other lane status (it would mean a bug in this binding).
    """
    fn = _load()
    if fn is None:
        raise RuntimeError(f"libcrypto_mb unavailable: {_load_error}")
    n = points.shape[0]
    if n == 0:
        return np.empty((0, _SIZE), dtype=np.uint8), []
    padded = -(-n // LANES) * LANES
    inputs = np.empty((padded, _SIZE), dtype=np.uint8)
    inputs[:n] = points
    inputs[n:] = np.frombuffer(_PADDING_POINT, dtype=np.uint8)
    outputs = np.empty((padded, _SIZE), dtype=np.uint8)
    offsets = np.arange(padded, dtype=np.uint64) * np.uint64(_SIZE)
    if isinstance(scalar, np.ndarray):
        keys = np.empty((padded, _SIZE), dtype=np.uint8)
        keys[:n] = scalar
        keys[n:] = keys[0]
        key_ptrs, key_step = offsets + np.uint64(keys.ctypes.data), LANES * 8
    else:
        key = np.frombuffer(bytes(scalar), dtype=np.uint8).copy()
        key_ptrs, key_step = np.full(LANES, key.ctypes.data, dtype=np.uint64), 0
    in_ptrs = offsets + np.uint64(inputs.ctypes.data)
    out_ptrs = offsets + np.uint64(outputs.ctypes.data)
    in_base, out_base, key_base = in_ptrs.ctypes.data, out_ptrs.ctypes.data, key_ptrs.ctypes.data
    row_bytes = LANES * 8

    failed: list[tuple[int, int]] = []
    for row in range(padded // LANES):
        status = fn(out_base + row * row_bytes, key_base + row * key_step, in_base + row * row_bytes)
        if status:
            failed.append((row, status))
    low_order: list[int] = []
    for row, status in failed:
        for lane in range(LANES):
            lane_status = (status >> (4 * lane)) & 0xF
            index = row * LANES + lane
            if lane_status == _MBX_STATUS_LOW_ORDER_ERR:
                low_order.append(index)
            elif lane_status:
                raise RuntimeError(f"mbx_x25519_mb8 lane {lane} status {lane_status}")
    return outputs[:n], [i for i in low_order if i < n]


def _load():
    global _x25519_mb8, _load_error
    if _x25519_mb8 is not None or _load_error is not None:
        return _x25519_mb8
    try:
        _x25519_mb8 = _open()
    except (OSError, AttributeError, RuntimeError) as err:
        _load_error = str(err)
    return _x25519_mb8


def _open():
    lib_dir = _library_dir()
    for name in _RUNTIME_LIBS:
        path = lib_dir / name
        if path.exists():
            ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(str(next(lib_dir / n for n in _LIBRARY_NAMES if (lib_dir / n).exists())))
    lib.mbx_get_algo_info.argtypes = [ctypes.c_int]
    lib.mbx_get_algo_info.restype = ctypes.c_uint64
    if not lib.mbx_get_algo_info(_MBX_ALGO_X25519):
        raise RuntimeError("this CPU lacks AVX-512 IFMA, which libcrypto_mb's X25519 needs")
    fn = lib.mbx_x25519_mb8
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    fn.restype = ctypes.c_uint32      # mbx_status is int32u
    return fn


def _library_dir() -> Path:
    candidates = [Path(sys.prefix) / "lib", Path(sys.base_prefix) / "lib"]
    override = os.environ.get("MATCHER_CRYPTO_MB_DIR")
    if override:
        candidates.insert(0, Path(override))
    for directory in candidates:
        if any((directory / n).exists() for n in _LIBRARY_NAMES):
            return directory
    raise RuntimeError("libcrypto_mb not found (pip install ipp-crypto intel-cmplr-lib-rt)")
