#!/usr/bin/env python3
"""Writes the GGUF fixtures of Tests/GGUFTests/Fixtures with the real `gguf` package (0.19.0) and,
for each, an expected JSON read back by gguf's own GGUFReader.

    python3 -m venv /work/venv-gguf && /work/venv-gguf/bin/pip install gguf numpy
    /work/venv-gguf/bin/python scripts/make-gguf-fixtures.py

With LLAMA_CPP_SDIST set it also writes the codec oracle (codecs.gguf, codecs-stress.json) through
scripts/make-gguf-codec-fixtures.py.

Expected JSON (`NAME.expected.json`): version, alignment, data_start (file offset of the data
section), keys in file order as {key, canonical}, tensors in file order as {name, type (ggml type
number), dims (ggml order, as stored), offset (relative to data_start), bytes, sha256}.

`canonical` is an ASCII rendering both sides compute: `UINT8:5`, `FLOAT32:<bit pattern as
decimal>`, `BOOL:true`, `STRING:<hex of the UTF-8 bytes>`, `ARRAY[<element>,...]`. It is built from
the values written and checked here against what GGUFReader reports (types and contents).
"""
import hashlib
import json
import os
import struct
import subprocess
import sys

import numpy as np
import gguf
from gguf import GGUFReader, GGUFValueType as VT, GGUFWriter, GGMLQuantizationType as QT

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "GGUFTests", "Fixtures")


def canonical(value, vtype, sub=None):
    if vtype == VT.ARRAY:
        items = []
        for v in value:
            if isinstance(v, list):
                items.append(canonical(v, VT.ARRAY, sub))
            else:
                items.append(canonical(v, sub))
        return "ARRAY[" + ",".join(items) + "]"
    if vtype == VT.STRING:
        return "STRING:" + value.encode("utf-8").hex()
    if vtype == VT.BOOL:
        return "BOOL:" + ("true" if value else "false")
    if vtype == VT.FLOAT32:
        return "FLOAT32:%d" % struct.unpack("<I", struct.pack("<f", value))[0]
    if vtype == VT.FLOAT64:
        return "FLOAT64:%d" % struct.unpack("<Q", struct.pack("<d", value))[0]
    return "%s:%d" % (vtype.name, int(value))


def flatten(value):
    if isinstance(value, list):
        return [x for v in value for x in flatten(v)]
    return [value]


def write(name, kvs, tensors, alignment=None, version=None):
    path = os.path.join(OUT, name + ".gguf")
    w = GGUFWriter(path, arch="llama")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    written = [("general.architecture", "llama", VT.STRING, None)]
    if alignment is not None:
        written.append(("general.alignment", alignment, VT.UINT32, None))
    for key, value, vtype, sub in kvs:
        if vtype == VT.ARRAY:  # nested arrays: the outer element type is ARRAY, the inner one inferred (INT32)
            nested = isinstance(value[0], list)
            w.add_key_value(key, value, VT.ARRAY, sub_type=VT.ARRAY if nested else sub)
        else:
            w.add_key_value(key, value, vtype)
        written.append((key, value, vtype, sub))
    for tname, data, shape, qtype in tensors:
        w.add_tensor(tname, data, raw_shape=shape, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if version is not None:  # v2 and v3 share the little-endian layout; only the version differs
        with open(path, "r+b") as f:
            f.seek(4)
            f.write(struct.pack("<I", version))

    r = GGUFReader(path)
    fields = [f for f in r.fields.values() if not f.name.startswith("GGUF.")]
    assert [f.name for f in fields] == [k for k, *_ in written], ([f.name for f in fields], written)
    keys = []
    for f, (key, value, vtype, sub) in zip(fields, written):
        assert f.types[0] == vtype, (key, f.types)
        got = f.contents()
        if vtype == VT.ARRAY:
            assert f.types[-1] == sub, (key, f.types, sub)
            exp = flatten(value)
            if sub in (VT.FLOAT32, VT.FLOAT64):
                assert [float(np.float32(x)) if sub == VT.FLOAT32 else x for x in exp] == got, (key, got)
            else:
                assert exp == got, (key, exp, got)
        elif vtype == VT.FLOAT32:
            assert float(np.float32(value)) == got, (key, got)
        else:
            assert value == got, (key, value, got)
        keys.append({"key": key, "canonical": canonical(value, vtype, sub)})
    out = []
    for t in r.tensors:
        raw = bytes(np.asarray(t.data).tobytes())
        assert len(raw) == int(t.n_bytes), (t.name, len(raw), t.n_bytes)
        out.append({
            "name": t.name,
            "type": int(t.tensor_type),
            "dims": [int(d) for d in t.shape],
            "offset": int(t.data_offset - r.data_offset),
            "bytes": int(t.n_bytes),
            "sha256": hashlib.sha256(raw).hexdigest(),
        })
    expected = {
        "version": int(r.fields["GGUF.version"].contents()),
        "alignment": int(r.alignment),
        "data_start": int(r.data_offset),
        "file_size": os.path.getsize(path),
        "keys": keys,
        "tensors": out,
    }
    with open(os.path.join(OUT, name + ".expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"{name}.gguf: {os.path.getsize(path)} bytes, {len(keys)} keys, {len(out)} tensors")


def main():
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "ggml-types.json"), "w") as f:  # gguf's ggml type table
        json.dump([{"name": t.name, "type": int(t), "block_size": b, "type_size": s}
                   for t, (b, s) in gguf.GGML_QUANT_SIZES.items()], f, indent=1)
        f.write("\n")
    rng = np.random.default_rng(18)
    scalars = [
        ("test.u8", 200, VT.UINT8, None), ("test.i8", -100, VT.INT8, None),
        ("test.u16", 60000, VT.UINT16, None), ("test.i16", -30000, VT.INT16, None),
        ("test.u32", 4000000000, VT.UINT32, None), ("test.i32", -2000000000, VT.INT32, None),
        ("test.u64", 18446744073709551615, VT.UINT64, None), ("test.i64", -9223372036854775808, VT.INT64, None),
        ("test.f32", 3.14159, VT.FLOAT32, None), ("test.f64", -2.718281828459045, VT.FLOAT64, None),
        ("test.bool_true", True, VT.BOOL, None), ("test.bool_false", False, VT.BOOL, None),
        ("general.name", "Tiny Llämä ✓ 模型", VT.STRING, None), ("test.empty_string", "", VT.STRING, None),
        ("general.file_type", 1, VT.UINT32, None),
        ("llama.context_length", 128, VT.UINT32, None), ("llama.embedding_length", 32, VT.UINT32, None),
        ("llama.block_count", 2, VT.UINT32, None),
    ]
    arrays = [
        ("test.arr_u8", [0, 1, 255], VT.ARRAY, VT.UINT8), ("test.arr_i8", [-128, 0, 127], VT.ARRAY, VT.INT8),
        ("test.arr_u16", [1, 65535], VT.ARRAY, VT.UINT16), ("test.arr_i16", [-32768, 32767], VT.ARRAY, VT.INT16),
        ("test.arr_u32", [7, 4294967295], VT.ARRAY, VT.UINT32), ("test.arr_i32", [-5, 5, -2147483648], VT.ARRAY, VT.INT32),
        ("test.arr_u64", [0, 18446744073709551615], VT.ARRAY, VT.UINT64), ("test.arr_i64", [-1, 9223372036854775807], VT.ARRAY, VT.INT64),
        ("test.arr_f32", [0.5, -1.25, 1e-3], VT.ARRAY, VT.FLOAT32), ("test.arr_f64", [1e300, -0.0], VT.ARRAY, VT.FLOAT64),
        ("test.arr_bool", [True, False, True], VT.ARRAY, VT.BOOL),
        ("tokenizer.ggml.tokens", ["<s>", "</s>", "▁hello", "héllo", "🙂", ""], VT.ARRAY, VT.STRING),
        ("test.nested", [[1, 2], [3], [4, 5, 6]], VT.ARRAY, VT.INT32),
    ]
    f32 = rng.standard_normal((4, 8)).astype(np.float32)
    tensors = [
        ("token_embd.weight", f32, None, None),
        ("blk.0.attn_q.weight", rng.standard_normal((8, 8)).astype(np.float16), None, None),
        ("blk.0.attn_k.weight", (rng.standard_normal((2, 8)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16), (2, 8), QT.BF16),
        ("blk.0.ffn_norm.weight", rng.standard_normal(5).astype(np.float64), None, None),
        ("blk.0.ids", np.arange(6, dtype=np.int32), None, None),
        ("blk.0.bytes", np.arange(3, dtype=np.int8), None, None),
        ("blk.0.i16", np.arange(4, dtype=np.int16), None, None),
        ("blk.0.i64", np.arange(2, dtype=np.int64), None, None),
        ("output_norm.weight", rng.standard_normal((3, 1, 2)).astype(np.float32), None, None),
    ]
    write("all-types", scalars + arrays, tensors)
    write("all-types-v2", scalars, tensors[:3], version=2)

    q = []
    w = rng.standard_normal((4, 64)).astype(np.float32)
    for qt in (QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1):
        q.append((f"blk.0.{qt.name.lower()}.weight", gguf.quants.quantize(w, qt), None, qt))
    wk = rng.standard_normal((2, 256)).astype(np.float32)
    for qt in (QT.Q4_K, QT.Q2_K, QT.Q3_K, QT.Q5_K, QT.Q6_K):
        try:
            q.append((f"blk.0.{qt.name.lower()}.weight", gguf.quants.quantize(wk, qt), None, qt))
        except NotImplementedError:
            # gguf.quants has no quantizer for this type: random bytes of the right size, which
            # the reader treats alike (it never decodes blocks).
            block, size = gguf.GGML_QUANT_SIZES[qt]
            raw = rng.integers(0, 256, (wk.shape[0], wk.shape[1] // block * size), dtype=np.uint8)
            q.append((f"blk.0.{qt.name.lower()}.weight", raw, None, qt))
    q.append(("output_norm.weight", rng.standard_normal(7).astype(np.float32), None, None))
    write("quantized", [("general.file_type", 7, VT.UINT32, None), ("general.name", "quantized", VT.STRING, None)], q)
    write("align64", [("general.name", "aligned to 64", VT.STRING, None)],
          [(f"t{i}", rng.standard_normal(i + 1).astype(np.float32), None, None) for i in range(4)], alignment=64)


def malformed():
    """Fixtures/malformed/*.gguf: one hand-built file per way a GGUF can be wrong (written byte by
    byte: the gguf writer refuses to make them). Each must be refused with a one-line error."""
    out = os.path.join(OUT, "malformed")
    os.makedirs(out, exist_ok=True)
    u32 = lambda v: struct.pack("<I", v)
    u64 = lambda v: struct.pack("<Q", v)
    gstr = lambda b: u64(len(b)) + b

    def gguf(kvs=b"", n_kv=0, infos=b"", n_t=0, data=b"", version=3, magic=b"GGUF", align=32):
        head = magic + u32(version) + u64(n_t) + u64(n_kv) + kvs + infos
        head += b"\0" * (-len(head) % align)
        return head + data

    kv = gstr(b"k") + u32(4) + u32(1)
    info = lambda name, dims, t, off: gstr(name) + u32(len(dims)) + b"".join(u64(d) for d in dims) + u32(t) + u64(off)
    good = gguf(kv, 1, info(b"t", [4], 0, 0), 1, b"\0" * 16)
    files = {
        "truncated-header": good[:30],
        "truncated-data": good[:-4],
        "bad-magic": b"GGML" + good[4:],
        "version-1": gguf(kv, 1, version=1),
        "big-endian": gguf(kv, 1, version=0x03000000),
        "huge-kv-count": gguf(kv, 1 << 62),
        "huge-tensor-count": gguf(kv, 1, n_t=1 << 62),
        "huge-string-length": gguf(gstr(b"k")[:0] + u64(1 << 62) + b"k", 1),
        "huge-array-count": gguf(gstr(b"k") + u32(9) + u32(0) + u64(1 << 62), 1),
        "unknown-value-type": gguf(gstr(b"k") + u32(13) + u32(0), 1),
        "key-not-utf8": gguf(gstr(b"k\xff") + u32(0) + b"\1", 1),
        "value-not-utf8": gguf(gstr(b"k") + u32(8) + gstr(b"\xc3\x28"), 1),
        "duplicate-key": gguf(kv + kv, 2),
        "alignment-not-power-of-two": gguf(gstr(b"general.alignment") + u32(4) + u32(48), 1),
        "too-many-dims": gguf(kv, 1, info(b"t", [1, 1, 1, 1, 1], 0, 0), 1, b"\0" * 16),
        "unknown-ggml-type": gguf(kv, 1, info(b"t", [4], 4, 0), 1, b"\0" * 16),
        "partial-block": gguf(kv, 1, info(b"t", [33], 8, 0), 1, b"\0" * 68),
        "dims-overflow": gguf(kv, 1, info(b"t", [1 << 32, 1 << 32], 0, 0), 1, b"\0" * 16),
        "unaligned-offset": gguf(kv, 1, info(b"t", [4], 0, 4), 1, b"\0" * 64),
        "offset-past-end": gguf(kv, 1, info(b"t", [4], 0, 1 << 40), 1, b"\0" * 16),
        "overlapping-tensors": gguf(kv, 1, info(b"a", [16], 0, 0) + info(b"b", [4], 0, 32), 2, b"\0" * 64),
        "duplicate-tensor": gguf(kv, 1, info(b"a", [4], 0, 0) + info(b"a", [4], 0, 32), 2, b"\0" * 64),
    }
    for name, data in files.items():
        with open(os.path.join(out, name + ".gguf"), "wb") as f:
            f.write(data)
    print(f"malformed/: {len(files)} files")


def codecs():
    """codecs.gguf and codecs-stress.json (scripts/make-gguf-codec-fixtures.py), which need
    llama.cpp's C reference from the llama-cpp-python sdist named by LLAMA_CPP_SDIST."""
    if not os.environ.get("LLAMA_CPP_SDIST"):
        print("codecs.gguf: not regenerated (set LLAMA_CPP_SDIST, see make-gguf-codec-fixtures.py)", file=sys.stderr)
        return
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "make-gguf-codec-fixtures.py")
    subprocess.run([sys.executable, script], check=True)


if __name__ == "__main__":
    malformed()
    main()
    codecs()
