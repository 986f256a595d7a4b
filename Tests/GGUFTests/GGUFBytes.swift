/// Builds GGUF files byte by byte for the malformed-input tests: little-endian fields, GGUF strings,
/// and padding, with nothing checked (the point is to write what a writer never would).
struct GGUFBytes {
    var bytes: [UInt8] = []

    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func string(_ s: String) { raw(Array(s.utf8)) }
    mutating func raw(_ b: [UInt8]) { u64(UInt64(b.count)); bytes += b }
    mutating func pad(to alignment: Int) { while bytes.count % alignment != 0 { bytes.append(0) } }

    /// Magic, version and the two counts.
    mutating func header(version: UInt32 = 3, tensors: UInt64, keys: UInt64) {
        bytes += Array("GGUF".utf8)
        u32(version)
        u64(tensors)
        u64(keys)
    }

    /// A tensor info: name, dims, type, offset.
    mutating func tensor(_ name: String, dims: [UInt64], type: UInt32 = 0, offset: UInt64) {
        string(name)
        u32(UInt32(dims.count))
        for d in dims { u64(d) }
        u32(type)
        u64(offset)
    }

    /// A complete valid file: one UINT32 key `k` = 1, then `tensors` (F32 unless given) with their
    /// data zeroed, aligned to 32.
    static func file(tensors: [(String, [UInt64], UInt32, UInt64)], dataBytes: Int) -> [UInt8] {
        var b = GGUFBytes()
        b.header(tensors: UInt64(tensors.count), keys: 1)
        b.string("k"); b.u32(4); b.u32(1)
        for t in tensors { b.tensor(t.0, dims: t.1, type: t.2, offset: t.3) }
        b.pad(to: 32)
        b.bytes += [UInt8](repeating: 0, count: dataBytes)
        return b.bytes
    }
}
