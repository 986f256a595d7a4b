/// Lays out and encodes a GGUF v3 file's header: what `GGUFFile` reads, written back.
///
/// Layout (ggml's docs/gguf.md, as gguf-py's `GGUFWriter` and llama.cpp's `gguf_write_to_buf`
/// write it): magic `GGUF`, version 3 (uint32), tensor count and metadata count (uint64); each
/// key-value pair as key (uint64 length + UTF-8), value type (uint32), value (strings as length +
/// bytes; arrays as element type, uint64 count, elements); each tensor info as name, dimension
/// count (uint32), dimensions (uint64, innermost first), ggml type (uint32), data offset (uint64);
/// zero padding to `alignment`. The data section then holds the tensors in info order, each at
/// the next multiple of `alignment` and each followed by zero padding to one, the last included.
/// All integers little-endian.
public enum GGUFHeaderEncoder {
    /// The header bytes (padding included) and each tensor's data offset.
    /// - Parameters:
    ///   - metadata: key-value pairs in the order to write (`general.alignment`, if wanted, among them).
    ///   - tensors: name, dimensions (ggml order) and type of each tensor, in file order.
    ///   - alignment: a power of two: the data section's and each tensor's alignment.
    /// - Returns: `header` (ending at the data section), the offset of each tensor's data from the
    ///   start of the data section, and the whole file's size.
    public static func layout(metadata: [(key: String, value: GGUFValue)], tensors: [(name: String, dims: [UInt64], type: GGMLType)],
                              alignment: Int) -> (header: [UInt8], offsets: [UInt64], fileSize: Int) {
        precondition(alignment > 0 && alignment & (alignment - 1) == 0, "alignment is a power of two")
        var out: [UInt8] = Array("GGUF".utf8)
        append(UInt32(3), to: &out)
        append(UInt64(tensors.count), to: &out)
        append(UInt64(metadata.count), to: &out)
        for (key, value) in metadata {
            appendString(key, to: &out)
            append(value.type.rawValue, to: &out)
            appendValue(value, to: &out)
        }
        var offsets: [UInt64] = []
        var offset = 0
        for t in tensors {
            appendString(t.name, to: &out)
            append(UInt32(t.dims.count), to: &out)
            for d in t.dims { append(d, to: &out) }
            append(t.type.rawValue, to: &out)
            append(UInt64(offset), to: &out)
            offsets.append(UInt64(offset))
            offset = padded(offset + byteCount(dims: t.dims, type: t.type), alignment)
        }
        out += [UInt8](repeating: 0, count: padded(out.count, alignment) - out.count)
        return (out, offsets, out.count + offset)
    }

    /// `dims[0] / blockSize × typeSize × dims[1] × …` (the caller's dimensions are valid).
    public static func byteCount(dims: [UInt64], type: GGMLType) -> Int {
        let rows = dims.dropFirst().reduce(1) { $0 * Int($1) }
        return Int(dims.first ?? 1) / type.blockSize * type.typeSize * rows
    }

    /// `n` rounded up to a multiple of `alignment`.
    public static func padded(_ n: Int, _ alignment: Int) -> Int { (n + alignment - 1) / alignment * alignment }

    private static func append<T: FixedWidthInteger>(_ v: T, to out: inout [UInt8]) {
        withUnsafeBytes(of: v.littleEndian) { out += $0 }
    }

    private static func appendString(_ s: String, to out: inout [UInt8]) {
        let bytes = Array(s.utf8)
        append(UInt64(bytes.count), to: &out)
        out += bytes
    }

    private static func appendValue(_ value: GGUFValue, to out: inout [UInt8]) {
        switch value {
        case let .uint8(v): append(v, to: &out)
        case let .int8(v): append(v, to: &out)
        case let .uint16(v): append(v, to: &out)
        case let .int16(v): append(v, to: &out)
        case let .uint32(v): append(v, to: &out)
        case let .int32(v): append(v, to: &out)
        case let .uint64(v): append(v, to: &out)
        case let .int64(v): append(v, to: &out)
        case let .float32(v): append(v.bitPattern, to: &out)
        case let .float64(v): append(v.bitPattern, to: &out)
        case let .bool(v): out.append(v ? 1 : 0)
        case let .string(s): appendString(s, to: &out)
        case let .array(type, items):
            append(type.rawValue, to: &out)
            append(UInt64(items.count), to: &out)
            for item in items { appendValue(item, to: &out) }
        }
    }
}
