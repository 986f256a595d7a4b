#!/usr/bin/env python3
"""Writes Tests/GGUFTests/Fixtures/codecs.gguf, the oracle for lora-tool's ggml tensor codecs, from
the real references: `gguf.quants` (gguf 0.19.0) and llama.cpp's C reference (ggml-quants.c) for
what gguf-py does not implement (it quantizes no K-quant type).

    python3 -m venv /work/venv-gguf && /work/venv-gguf/bin/pip install gguf==0.19.0 numpy
    pip download llama-cpp-python==0.3.36 --no-deps --no-binary :all: -d DIR   # only the sdist is used
    LLAMA_CPP_SDIST=DIR/llama_cpp_python-0.3.36.tar.gz /work/venv-gguf/bin/python scripts/make-gguf-codec-fixtures.py

(`pip download` builds the sdist's metadata after saving it, which needs cmake; the tarball it
saved is all this script needs.) ggml-quants.c is compiled from the tarball into a temporary
directory with `cc -O2 -ffp-contract=off -DNDEBUG` (release asserts, no fused multiply-adds: the
x86-64 baseline build that llama.cpp's ggml-base gets) and called through ctypes; none of its
source is committed.

codecs.gguf holds, with ggml dims [512, 9] for every tensor (9 rows of 512):
  input                    F32: the values quantized; each 256-value block is one case (below)
  TYPE.quantized           TYPE: the reference codes of `input` (for F32/F16/BF16 the conversion)
  TYPE.dequantized         F32: gguf.quants.dequantize of TYPE.quantized
  TYPE.random              TYPE, ggml dims [512, 2]: random bytes (codes no quantizer writes:
                           every scale, every high bit, NaN/inf half scales)
  TYPE.random.dequantized  F32: gguf.quants.dequantize of TYPE.random
and a key codec.TYPE.quantizer naming where TYPE.quantized came from ("gguf-py" or "ggml-c").

codecs-stress.json: SHA-256 of the reference codes of `stress_input` (65536 values made from an
xorshift32 stream with integer operations only, so the Swift tests rebuild them exactly) and of
their gguf dequantization, per type: many more blocks than codecs.gguf holds, where a single
rounding done in another order would change some code.
Wherever both gguf-py and the C reference implement an operation, the script checks they agree
byte for byte (NaN compared as NaN) and stops if not.
"""
import ctypes
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT, GGUFWriter

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "GGUFTests", "Fixtures")

# The types lora-tool decodes, in ggml's order; the C reference names its row functions after them.
TYPES = [QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1,
         QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K]
QUANTIZED = TYPES[3:]

STUBS = r"""
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <stdint.h>
/* ggml.c symbols ggml-quants.c references from code paths this driver never calls. */
void ggml_abort(const char *file, int line, const char *fmt, ...) { fprintf(stderr, "abort %s:%d\n", file, line); abort(); }
size_t ggml_row_size(int type, int64_t ne) { (void)type; (void)ne; abort(); }
const char *ggml_type_name(int type) { (void)type; return "?"; }
size_t ggml_type_size(int type) { (void)type; abort(); }
"""


def sdist_path():
    path = os.environ.get("LLAMA_CPP_SDIST")
    if not path:
        sys.exit("set LLAMA_CPP_SDIST to llama-cpp-python's sdist (.tar.gz), see the docstring")
    return path


def build_reference(tmp):
    """Extracts ggml's sources from the sdist and builds them into a shared library."""
    with tarfile.open(sdist_path()) as tar:
        def wanted(name):  # ggml's headers (ggml-quants.c includes some of ggml-cpu's) and the file
            return "/vendor/llama.cpp/ggml/" in name and (name.endswith(".h") or name.endswith("/ggml/src/ggml-quants.c"))
        members = [m for m in tar.getmembers() if m.isfile() and wanted(m.name)]
        tar.extractall(tmp, members=members, filter="data")
    root = next(os.path.join(d, "") for d, _, fs in os.walk(tmp) if "ggml-quants.c" in fs)
    ggml = os.path.dirname(os.path.dirname(root))
    stubs = os.path.join(tmp, "stubs.c")
    with open(stubs, "w") as f:
        f.write(STUBS)
    lib = os.path.join(tmp, "libggmlref.so")
    subprocess.run(["cc", "-O2", "-ffp-contract=off", "-DNDEBUG", "-fPIC", "-shared",
                    "-I", os.path.join(ggml, "include"), "-I", os.path.join(ggml, "src"),
                    os.path.join(ggml, "src", "ggml-quants.c"), stubs, "-o", lib, "-lm"], check=True)
    return ctypes.CDLL(lib)


def c_name(qt):
    """ggml's spelling in function names: q4_0, q4_K."""
    return qt.name[:-1].lower() + "K" if qt.name.endswith("_K") else qt.name.lower()


def c_quantize(lib, values, qt):
    block, size = gguf.GGML_QUANT_SIZES[qt]
    x = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    out = np.zeros(x.size // block * size, dtype=np.uint8)
    fn = getattr(lib, f"quantize_row_{c_name(qt)}_ref")
    fn(x.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(x.size))
    return out.reshape(values.shape[0], -1)


def c_dequantize(lib, raw, qt):
    block, size = gguf.GGML_QUANT_SIZES[qt]
    b = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1)
    out = np.zeros(b.size // size * block, dtype=np.float32)
    getattr(lib, f"dequantize_row_{c_name(qt)}")(
        b.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(out.size))
    return out.reshape(raw.shape[0], -1)


def same_floats(a, b):
    a, b = a.view(np.uint32), b.view(np.uint32)
    nan_a = (a & 0x7FFFFFFF) > 0x7F800000
    nan_b = (b & 0x7FFFFFFF) > 0x7F800000
    return a.shape == b.shape and bool(np.all((a == b) | (nan_a & nan_b)))


def cases(rng):
    """9 rows × 2 blocks of 256: one case per block (so per 32-block as well, for the legacy types)."""
    n = 256
    normal = lambda s=1.0: (rng.standard_normal(n) * s).astype(np.float32)
    outlier = normal(0.01)
    outlier[77] = 10.0
    mixed_zero = normal()
    mixed_zero[::3] = 0.0
    mixed_zero[1::7] = -0.0
    one_zero_group = normal()
    one_zero_group[32:64] = 0.0  # one all-zero sub-block inside a non-zero super-block
    ties = (np.arange(n) % 17 - 8).astype(np.float32)  # integer values: exact halfway products
    blocks = [
        normal(), normal(0.02),                              # typical weights
        np.zeros(n, np.float32), np.full(n, 0.75, np.float32),  # all zero, constant
        normal(1e-6), normal(1e-30),                         # tiny: half scales subnormal, then zero
        normal(3e4), normal(1e30),                           # huge: half scales overflow to inf
        -np.abs(normal()), np.abs(normal()),                 # negative-only, positive-only
        outlier, mixed_zero,                                 # one outlier; zeros and -0 among values
        one_zero_group, ties,                                # a zero 32-group; integers
        np.full(n, -3.5, np.float32), normal(100.0),         # negative constant; large but in range
        normal(1e-39),                                       # subnormal floats: inverse scales overflow
        np.concatenate([normal(1e-3)[:128], normal(1e3)[:128]]),  # magnitudes 1e6 apart in a block
    ]
    return np.stack(blocks).reshape(9, 2 * n)


def stress_input(count=65536, seed=2463534242):
    """Floats built from xorshift32 draws r: sign bit 31, mantissa bits 0–22, exponent from bits
    23–27: even 256-blocks within [2^-3, 2), odd ones spread over [2^-23, 2^9) (heavy-tailed)."""
    out = np.empty(count, dtype=np.uint32)
    x = seed
    for i in range(count):
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        e = 124 + (x >> 23 & 3) if (i // 256) % 2 == 0 else 104 + (x >> 23 & 31)
        out[i] = (x & 0x80000000) | (e << 23) | (x & 0x7FFFFF)
    return out.view(np.float32).reshape(-1, 512)


def reference_quantize(lib, x, qt):
    """gguf.quants where it implements the type (checked against C where C has it), else C."""
    try:
        q = gguf.quants.quantize(x, qt)
    except NotImplementedError:
        return c_quantize(lib, x, qt), "ggml-c"
    if qt in QUANTIZED:
        c = c_quantize(lib, x, qt)
        assert np.array_equal(q, c), f"{qt.name}: gguf.quants.quantize differs from quantize_row_{c_name(qt)}_ref"
    return q, "gguf-py"


def main():
    rng = np.random.default_rng(1818)
    with tempfile.TemporaryDirectory() as tmp:
        lib = build_reference(tmp)
        x = cases(rng)
        path = os.path.join(OUT, "codecs.gguf")
        w = GGUFWriter(path, arch="llama")
        w.add_tensor("input", x)
        for qt in TYPES:
            q, source = reference_quantize(lib, x, qt)
            w.add_key_value(f"codec.{qt.name}.quantizer", source, gguf.GGUFValueType.STRING)
            raw = q.view(np.uint8).reshape(x.shape[0], -1)
            deq = gguf.quants.dequantize(raw, qt).astype(np.float32)
            if qt in QUANTIZED:
                assert same_floats(deq, c_dequantize(lib, raw, qt)), f"{qt.name}: dequantize differs from C"
            w.add_tensor(f"{qt.name}.quantized", raw, raw_dtype=qt)
            w.add_tensor(f"{qt.name}.dequantized", deq)
            if qt in QUANTIZED:
                block, size = gguf.GGML_QUANT_SIZES[qt]
                rnd = rng.integers(0, 256, (2, 512 // block * size), dtype=np.uint8)
                rdeq = gguf.quants.dequantize(rnd, qt).astype(np.float32)
                assert same_floats(rdeq, c_dequantize(lib, rnd, qt)), f"{qt.name}: random dequantize differs from C"
                w.add_tensor(f"{qt.name}.random", rnd, raw_dtype=qt)
                w.add_tensor(f"{qt.name}.random.dequantized", rdeq)
            print(f"{qt.name}: quantized by {source}")
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        print(f"codecs.gguf: {os.path.getsize(path)} bytes")

        xs = stress_input()
        stress = {"count": int(xs.size), "seed": 2463534242, "sha256": {}}
        for qt in TYPES:
            raw = reference_quantize(lib, xs, qt)[0].view(np.uint8)
            deq = gguf.quants.dequantize(raw.reshape(xs.shape[0], -1), qt).astype(np.float32)
            stress["sha256"][qt.name] = {"quantized": hashlib.sha256(raw.tobytes()).hexdigest(),
                                         "dequantized": hashlib.sha256(deq.tobytes()).hexdigest()}
        with open(os.path.join(OUT, "codecs-stress.json"), "w") as f:
            json.dump(stress, f, indent=1)
            f.write("\n")
        print(f"codecs-stress.json: {len(stress['sha256'])} types")


if __name__ == "__main__":
    sys.exit(main())
