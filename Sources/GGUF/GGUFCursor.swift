/// Reads little-endian fields from an untrusted buffer, throwing `GGUFError` instead of reading past
/// its end.
///
/// `bytes` may be only the start of a file of `fileSize` bytes (header-only reading): counts are
/// checked against the file, and a field that lies in the file but past `bytes` throws `NeedMore`
/// so that the caller reads further and parses again.
struct GGUFCursor {
    let bytes: UnsafeRawBufferPointer
    let file: String
    let fileSize: Int
    var position = 0

    /// Thrown when a field lies past `bytes` but inside the file: read at least `needed` bytes.
    struct NeedMore: Error { let needed: Int }

    init(bytes: UnsafeRawBufferPointer, file: String, fileSize: Int? = nil) {
        self.bytes = bytes
        self.file = file
        self.fileSize = fileSize ?? bytes.count
    }

    /// Bytes of the file left after `position`.
    var remaining: Int { fileSize - position }

    mutating func take(_ count: Int, _ what: @autoclosure () -> String) throws -> UnsafeRawBufferPointer {
        guard count <= remaining else {
            throw GGUFError.truncated(file: file, what: what(), needed: UInt64(position) + UInt64(count), fileSize: fileSize)
        }
        guard count <= bytes.count - position else { throw NeedMore(needed: position + count) }
        defer { position += count }
        return UnsafeRawBufferPointer(rebasing: bytes[position..<(position + count)])
    }

    mutating func read<T: FixedWidthInteger>(_: T.Type, _ what: @autoclosure () -> String) throws -> T {
        let raw = try take(MemoryLayout<T>.size, what())
        return T(littleEndian: raw.loadUnaligned(as: T.self))
    }

    /// A GGUF string: uint64 byte length, then that many bytes of UTF-8 (no terminator).
    mutating func string(_ what: @autoclosure () -> String) throws -> String {
        let length = try read(UInt64.self, "length of " + what())
        guard length <= UInt64(remaining) else {
            throw GGUFError.countTooLarge(file: file, what: "length of " + what(), count: length, remaining: remaining)
        }
        let raw = try take(Int(length), what())
        guard let s = String(validating: raw, as: UTF8.self) else { throw GGUFError.notUTF8(file: file, what: what()) }
        return s
    }
}
