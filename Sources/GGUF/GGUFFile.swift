#if canImport(Glibc)
import Glibc
#endif
import SafeTensors

/// One GGUF file (v2 or v3, little-endian), memory-mapped; opening it parses and validates the
/// header only, and tensor data stays unread until `bytes(of:)`. `readHeader(path:)` reads the
/// header alone, with pread and no mapping (what `inspect` uses).
///
/// Layout (ggml's docs/gguf.md): magic `GGUF`, version (uint32), tensor count (uint64), metadata
/// count (uint64); the metadata as key (GGUF string), value type (uint32), value; the tensor infos
/// (see `GGUFTensorInfo`); padding to `general.alignment` (default 32); the data section, in which
/// every tensor starts at a multiple of the alignment. A GGUF string is a uint64 length and UTF-8
/// bytes; an array is an element type (uint32), a count (uint64) and the elements, without their type.
///
/// Refused with a `GGUFError` naming the file: another magic, big-endian files, versions other than
/// 2 and 3, truncation anywhere in the header, counts and lengths larger than what is left of the
/// file (checked before anything is allocated for them), unknown value or ggml types, non-UTF-8
/// strings, duplicate keys or tensor names, a `general.alignment` that is not a UINT32 power of two,
/// more than 4 dimensions, a first dimension not a multiple of the type's block size, sizes that
/// overflow, and data offsets that are unaligned, overlap or run past the end of the file.
///
/// Memory: the metadata values (a tokenizer vocabulary is held as strings) and the tensor infos.
/// Every count is checked against the bytes left before anything is reserved for it, but an array
/// element is a `GGUFValue` (at most 24 bytes, tested), so a file made of one-byte array elements
/// costs up to 24 times its size.
public final class GGUFFile: Sendable {
    /// Arrays may hold arrays; deeper nesting than this is refused rather than recursed into.
    public static let maximumNesting = 16
    public static let defaultAlignment = 32

    public let path: String
    public let map: MappedFile
    public let header: GGUFHeader
    private let byName: [String: Int]

    /// Opens, maps and validates `path` (through `MappedFile`, so a FIFO or directory is refused).
    /// - Throws: `GGUFError` for a malformed file; `SafeTensorsError.io`/`.unsupportedInput` when
    ///   it cannot be opened or is not a regular file.
    public init(path: String) throws {
        self.path = path
        map = try MappedFile(path: path)
        header = try GGUFFile.parse(map.bytes(offset: 0, count: map.size), file: path)
        var index: [String: Int] = [:]
        for (i, t) in header.tensors.enumerated() { index[t.name] = i }
        byName = index
    }

    /// True when `bytes` starts with the GGUF magic.
    public static func hasMagic(_ bytes: UnsafeRawBufferPointer) -> Bool {
        bytes.count >= 4 && bytes[0] == 0x47 && bytes[1] == 0x47 && bytes[2] == 0x55 && bytes[3] == 0x46
    }

    /// True when `path` names a regular file that starts with the GGUF magic, or ends in `.gguf`
    /// (so that a `.gguf` without the magic is reported as a bad GGUF, not as something else).
    /// Never blocks: a FIFO or device is not opened.
    public static func looksLikeGGUF(path: String) -> Bool {
        if path.hasSuffix(".gguf") { return true }
        var st = stat()
        guard stat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { return false }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var magic = [UInt8](repeating: 0, count: 4)
        guard pread(fd, &magic, 4, 0) == 4 else { return false }
        return magic.withUnsafeBytes { hasMagic($0) }
    }

    /// The tensor named `name`, or nil.
    public func info(_ name: String) -> GGUFTensorInfo? { byName[name].map { header.tensors[$0] } }

    /// The bytes of `tensor` inside the map (checked to lie in the file when opened). Valid while
    /// this file is alive.
    public func bytes(of tensor: GGUFTensorInfo) -> UnsafeRawBufferPointer {
        map.bytes(offset: header.dataStart + Int(tensor.offset), count: tensor.byteCount)
    }

    /// The bytes of the tensor named `name`.
    /// - Throws: `GGUFError.tensorNotFound`.
    public func bytes(of name: String) throws -> UnsafeRawBufferPointer {
        guard let t = info(name) else { throw GGUFError.tensorNotFound(file: path, tensor: name) }
        return bytes(of: t)
    }

    /// Parses and validates the GGUF file held in `bytes` (the whole file: offsets are checked
    /// against its size). Used for mapped files and by the fuzz target.
    /// - Throws: `GGUFError` naming `file`.
    public static func parse(_ bytes: UnsafeRawBufferPointer, file: String) throws -> GGUFHeader {
        do {
            return try parse(bytes, file: file, fileSize: bytes.count)
        } catch let more as GGUFCursor.NeedMore {
            preconditionFailure("a whole file never needs more than itself (\(more.needed) bytes)")
        }
    }

    /// Reads and validates only the header of `path` with pread (the data section is neither read
    /// nor mapped): first 1 MiB, more when the metadata runs longer (a tokenizer holds megabytes).
    /// Offsets are still checked against the file's size.
    /// - Throws: `GGUFError` for a malformed header; `SafeTensorsError` when the file cannot be
    ///   opened or read, or is not a regular file.
    public static func readHeader(path: String) throws -> GGUFHeader {
        let fd = try RegularFile.open(path)
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw SafeTensorsError.io(path: path, operation: "stat", errno: errno) }
        let size = Int(st.st_size)
        var length = min(size, 1 << 20)
        while true {
            var buffer = [UInt8](repeating: 0, count: length)
            var done = 0
            while done < length {
                let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, length - done, off_t(done)) }
                if n < 0 {
                    if errno == EINTR { continue }
                    throw SafeTensorsError.io(path: path, operation: "read", errno: errno)
                }
                if n == 0 { throw SafeTensorsError.io(path: path, operation: "read (file shrank)", errno: EIO) }
                done += n
            }
            do {
                return try buffer.withUnsafeBytes { try parse($0, file: path, fileSize: size) }
            } catch let more as GGUFCursor.NeedMore {
                length = min(size, max(more.needed, 2 * length))
            }
        }
    }

    /// `parse` of the first `bytes.count` bytes of a `fileSize`-byte file; throws
    /// `GGUFCursor.NeedMore` when the header runs past `bytes`.
    static func parse(_ bytes: UnsafeRawBufferPointer, file: String, fileSize: Int) throws -> GGUFHeader {
        var c = GGUFCursor(bytes: bytes, file: file, fileSize: fileSize)
        guard bytes.count >= 4 else {
            guard "GGUF".utf8.starts(with: bytes) else { throw GGUFError.notGGUF(file: file) }
            if fileSize >= 4 { throw GGUFCursor.NeedMore(needed: 4) }
            throw GGUFError.truncated(file: file, what: "magic", needed: 4, fileSize: fileSize)
        }
        guard hasMagic(bytes) else { throw GGUFError.notGGUF(file: file) }
        c.position = 4
        let version = try c.read(UInt32.self, "version")
        if version != 2 && version != 3 {
            if version.byteSwapped == 2 || version.byteSwapped == 3 { throw GGUFError.bigEndian(file: file) }
            throw GGUFError.unsupportedVersion(file: file, version: version)
        }
        let tensorCount = try c.read(UInt64.self, "tensor count")
        let keyCount = try c.read(UInt64.self, "metadata count")
        // A key takes at least 8 + 4 + 1 bytes, a tensor info 8 + 4 + 4 + 8.
        guard keyCount <= UInt64(c.remaining / 13) else {
            throw GGUFError.countTooLarge(file: file, what: "metadata count", count: keyCount, remaining: c.remaining)
        }
        guard tensorCount <= UInt64((c.remaining - Int(keyCount) * 13) / 24) else {
            throw GGUFError.countTooLarge(file: file, what: "tensor count", count: tensorCount, remaining: c.remaining)
        }

        var metadata: [(key: String, value: GGUFValue)] = []
        metadata.reserveCapacity(Int(keyCount))
        var keys = Set<String>()
        for i in 0..<Int(keyCount) {
            let key = try c.string("metadata key #\(i)")
            guard keys.insert(key).inserted else { throw GGUFError.duplicateKey(file: file, key: key) }
            let rawType = try c.read(UInt32.self, "type of key '\(key)'")
            guard let type = GGUFValueType(rawValue: rawType) else {
                throw GGUFError.unknownValueType(file: file, key: key, type: rawType)
            }
            metadata.append((key, try value(of: type, key: key, depth: 0, &c)))
        }

        var alignment = defaultAlignment
        if let a = metadata.first(where: { $0.key == "general.alignment" })?.value {
            guard case let .uint32(v) = a else {
                throw GGUFError.invalidAlignment(file: file, detail: "type \(a.type.name), expected UINT32")
            }
            guard v > 0, v & (v - 1) == 0 else { throw GGUFError.invalidAlignment(file: file, detail: "\(v) is not a power of two") }
            alignment = Int(v)
        }

        var tensors: [GGUFTensorInfo] = []
        tensors.reserveCapacity(Int(tensorCount))
        var names = Set<String>()
        for i in 0..<Int(tensorCount) {
            let name = try c.string("name of tensor #\(i)")
            guard names.insert(name).inserted else { throw GGUFError.duplicateTensor(file: file, tensor: name) }
            let nDims = try c.read(UInt32.self, "dimension count of tensor '\(name)'")
            guard nDims <= 4 else {
                throw GGUFError.invalidTensor(file: file, tensor: name, detail: "\(nDims) dimensions (ggml allows at most 4)")
            }
            var dims: [UInt64] = []
            for d in 0..<Int(nDims) { dims.append(try c.read(UInt64.self, "dimension \(d) of tensor '\(name)'")) }
            let rawType = try c.read(UInt32.self, "type of tensor '\(name)'")
            guard let type = GGMLType(rawValue: rawType) else {
                throw GGUFError.unknownGGMLType(file: file, tensor: name, type: rawType)
            }
            let offset = try c.read(UInt64.self, "data offset of tensor '\(name)'")
            let size = try byteCount(dims: dims, type: type, file: file, tensor: name)
            guard offset % UInt64(alignment) == 0 else {
                throw GGUFError.invalidOffset(file: file, tensor: name, detail: "\(offset) is not a multiple of the alignment \(alignment)")
            }
            tensors.append(GGUFTensorInfo(name: name, dims: dims, type: type, offset: offset, byteCount: size))
        }

        let (padded, overflow) = c.position.addingReportingOverflow(alignment - 1)
        let dataStart = overflow ? Int.max : padded / alignment * alignment
        let dataSize = fileSize >= dataStart ? UInt64(fileSize - dataStart) : 0
        if !tensors.isEmpty && dataStart > fileSize {
            throw GGUFError.truncated(file: file, what: "data section", needed: UInt64(dataStart), fileSize: fileSize)
        }
        var previousEnd: UInt64 = 0
        var previousName = ""
        for t in tensors.sorted(by: { $0.offset < $1.offset }) {
            let (end, overflow) = t.offset.addingReportingOverflow(UInt64(t.byteCount))
            guard !overflow, end <= dataSize else {
                throw GGUFError.invalidOffset(
                    file: file, tensor: t.name,
                    detail: "data [\(t.offset), +\(t.byteCount)) runs past the end of the \(dataSize)-byte data section")
            }
            guard t.offset >= previousEnd else {
                throw GGUFError.invalidOffset(file: file, tensor: t.name, detail: "data at \(t.offset) overlaps tensor '\(previousName)' (ends at \(previousEnd))")
            }
            previousEnd = end
            previousName = t.name
        }
        return GGUFHeader(version: version, metadata: metadata, tensors: tensors, alignment: alignment,
                          infoEnd: c.position, dataStart: dataStart, fileSize: fileSize)
    }

    /// `dims[0] / blockSize × typeSize × dims[1] × dims[2] × dims[3]`, as ggml computes `nbytes`;
    /// throws when the first dimension is not a whole number of blocks or anything overflows.
    static func byteCount(dims: [UInt64], type: GGMLType, file: String, tensor: String) throws -> Int {
        let ne0 = dims.first ?? 1
        guard ne0 % UInt64(type.blockSize) == 0 else {
            throw GGUFError.invalidTensor(file: file, tensor: tensor, detail: "first dimension \(ne0) is not a multiple of the \(type.name) block size \(type.blockSize)")
        }
        var elements: UInt64 = 1
        var size = ne0 / UInt64(type.blockSize)
        var overflow = false
        (size, overflow) = size.multipliedReportingOverflow(by: UInt64(type.typeSize))
        for d in dims {
            var o1 = false
            (elements, o1) = elements.multipliedReportingOverflow(by: d)
            overflow = overflow || o1
        }
        for d in dims.dropFirst() {
            var o2 = false
            (size, o2) = size.multipliedReportingOverflow(by: d)
            overflow = overflow || o2
        }
        guard !overflow, elements <= UInt64(Int64.max), size <= UInt64(Int64.max) else {
            throw GGUFError.invalidTensor(file: file, tensor: tensor, detail: "dimensions \(dims) overflow")
        }
        return Int(size)
    }

    /// One value of `type`; arrays recurse up to `maximumNesting` levels.
    static func value(of type: GGUFValueType, key: String, depth: Int, _ c: inout GGUFCursor) throws -> GGUFValue {
        let what = "value of key '\(key)'"
        switch type {
        case .uint8: return .uint8(try c.read(UInt8.self, what))
        case .int8: return .int8(try c.read(Int8.self, what))
        case .uint16: return .uint16(try c.read(UInt16.self, what))
        case .int16: return .int16(try c.read(Int16.self, what))
        case .uint32: return .uint32(try c.read(UInt32.self, what))
        case .int32: return .int32(try c.read(Int32.self, what))
        case .uint64: return .uint64(try c.read(UInt64.self, what))
        case .int64: return .int64(try c.read(Int64.self, what))
        case .float32: return .float32(Float(bitPattern: try c.read(UInt32.self, what)))
        case .float64: return .float64(Double(bitPattern: try c.read(UInt64.self, what)))
        case .bool:
            let b = try c.read(UInt8.self, what)
            guard b <= 1 else { throw GGUFError.invalidValue(file: c.file, key: key, detail: "bool value \(b) is neither 0 nor 1") }
            return .bool(b == 1)
        case .string: return .string(try c.string(what))
        case .array:
            guard depth < maximumNesting else { throw GGUFError.nestingTooDeep(file: c.file, key: key) }
            let rawType = try c.read(UInt32.self, "element type of key '\(key)'")
            guard let elementType = GGUFValueType(rawValue: rawType) else {
                throw GGUFError.unknownValueType(file: c.file, key: key, type: rawType)
            }
            let count = try c.read(UInt64.self, "element count of key '\(key)'")
            guard count <= UInt64(c.remaining / elementType.minimumSize) else {
                throw GGUFError.countTooLarge(file: c.file, what: "element count of key '\(key)'", count: count, remaining: c.remaining)
            }
            var items: [GGUFValue] = []
            items.reserveCapacity(Int(count))
            for _ in 0..<Int(count) { items.append(try value(of: elementType, key: key, depth: depth + 1, &c)) }
            return .array(elementType, items)
        }
    }
}
