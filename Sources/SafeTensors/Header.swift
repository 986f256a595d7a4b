/// A parsed and validated safetensors header.
public struct Header: Sendable, Equatable {
    /// Tensors in data order (ascending offsets).
    public var tensors: [TensorInfo]
    /// `__metadata__` entries in file order, or nil when absent.
    public var metadata: [(key: String, value: String)]?

    public static func == (lhs: Header, rhs: Header) -> Bool {
        guard lhs.tensors == rhs.tensors else { return false }
        switch (lhs.metadata, rhs.metadata) {
        case (nil, nil): return true
        case let (a?, b?): return a.count == b.count && zip(a, b).allSatisfy { $0.key == $1.key && $0.value == $1.value }
        default: return false
        }
    }

    /// The largest header length the reference accepts.
    public static let maximumLength: UInt64 = 100_000_000

    /// Bytes the tensors declare: the end of the last one's data (0 without tensors). A file with
    /// this header must be exactly `8 + N + dataSize` bytes long.
    public var dataSize: UInt64 { tensors.last?.dataOffsets.end ?? 0 }

    /// Parses and validates a header against the reference implementation's rules (safetensors
    /// `tensor.rs` `read_metadata` + `validate`), in the same order.
    ///
    /// Cost: linear in the header (one pass to validate UTF-8, one to parse, one O(n log n) sort of
    /// the tensors by offset). Memory: no tree of the whole header is built; what stays is the
    /// returned `TensorInfo`s (about 100 bytes each plus the name) and, while parsing, a set of the
    /// names (about 30 bytes each), one entry's JSON at a time and, briefly, one copy of the header
    /// for UTF-8 validation.
    /// - Parameters:
    ///   - headerBytes: the N header bytes after the 8-byte length.
    ///   - dataSize: bytes after the header, which the tensors must tile exactly.
    ///   - file: the name used in error messages.
    /// - Throws: `SafeTensorsError` naming the file and tensor.
    public static func parse(headerBytes: UnsafeRawBufferPointer, dataSize: UInt64, file: String) throws -> Header {
        let header = try parse(headerBytes: headerBytes, file: file)
        if header.dataSize != dataSize {
            throw SafeTensorsError.incompleteBuffer(
                file: file, dataEnd: header.dataSize, fileSize: Int(clamping: dataSize) + 8 + headerBytes.count)
        }
        return header
    }

    /// Parses and validates a header whose data section has not been read (a `.zst` stream): every
    /// rule except the last, that the data section be exactly `dataSize` bytes, which the caller
    /// checks against what follows.
    /// - Parameters:
    ///   - headerBytes: the N header bytes after the 8-byte length.
    ///   - file: the name used in error messages.
    /// - Throws: `SafeTensorsError` naming the file and tensor.
    public static func parse(headerBytes: UnsafeRawBufferPointer, file: String) throws -> Header {
        // Checked whole first, as the reference does; the copy is dropped at once.
        guard String(validating: headerBytes, as: UTF8.self) != nil else { throw SafeTensorsError.headerNotUTF8(file: file) }
        // Members are handled as they are parsed, so no tree of the whole header is ever built:
        // memory is the TensorInfos plus one entry's JSON at a time.
        var tensors: [TensorInfo] = []
        var metadata: [(key: String, value: String)]?
        // Swift String equality and hashing are canonical equivalence: a name equal to an earlier
        // one is either the same bytes (a duplicate key) or canonically equivalent Unicode; both are
        // refused, so this set never holds two members of one equivalence class.
        var seen = Set<String>()
        let notObject: JSONValue?
        do {
            notObject = try JSONParser.forEachMember(in: headerBytes) { key, keyOffset, value in
                let (inserted, other) = seen.insert(key)
                if !inserted {
                    if other.utf8.elementsEqual(key.utf8) {
                        throw JSONParser.Failure(offset: keyOffset, reason: "duplicate key \"\(key)\"")
                    }
                    throw SafeTensorsError.invalidHeader(
                        file: file, detail: "tensor names '\(other)' and '\(key)' are canonically equivalent Unicode")
                }
                if key == "__metadata__" {
                    metadata = try parseMetadata(value, file: file)
                } else {
                    tensors.append(try parseEntry(name: key, value: value, file: file))
                }
            }
        } catch let failure as JSONParser.Failure {
            throw SafeTensorsError.invalidHeader(file: file, detail: failure.description)
        }
        if let notObject {
            throw SafeTensorsError.invalidHeader(file: file, detail: "top level is \(notObject.typeName), not an object")
        }
        tensors.sort { ($0.dataOffsets.begin, $0.dataOffsets.end) < ($1.dataOffsets.begin, $1.dataOffsets.end) }
        var runningEnd: UInt64 = 0
        for t in tensors {
            let (b, e) = t.dataOffsets
            if b != runningEnd || e < b {
                let detail = e < b ? "end \(e) before begin \(b)"
                    : b < runningEnd ? "[\(b), \(e)) overlaps data ending at \(runningEnd)"
                    : "[\(b), \(e)) leaves a hole after byte \(runningEnd)"
                throw SafeTensorsError.invalidOffset(file: file, tensor: t.name, detail: detail)
            }
            guard let n = t.elementCount else { throw SafeTensorsError.validationOverflow(file: file, tensor: t.name) }
            let (bits, o) = UInt64(n).multipliedReportingOverflow(by: UInt64(t.dtype.bitSize))
            if o { throw SafeTensorsError.validationOverflow(file: file, tensor: t.name) }
            if bits % 8 != 0 { throw SafeTensorsError.misalignedSlice(file: file, tensor: t.name) }
            if e - b != bits / 8 {
                throw SafeTensorsError.tensorSizeMismatch(file: file, tensor: t.name, expected: bits / 8, actual: e - b)
            }
            runningEnd = e
        }
        return Header(tensors: tensors, metadata: metadata)
    }

    private static func parseMetadata(_ value: JSONValue, file: String) throws -> [(key: String, value: String)]? {
        if case .null = value { return nil }
        guard let members = value.objectMembers else {
            throw SafeTensorsError.invalidHeader(file: file, detail: "__metadata__ is \(value.typeName), not an object")
        }
        return try members.map { key, v in
            guard let s = v.stringValue else {
                throw SafeTensorsError.invalidHeader(
                    file: file, detail: "__metadata__ value for '\(key)' is \(v.typeName), not a string")
            }
            return (key, s)
        }
    }

    private static func parseEntry(name: String, value: JSONValue, file: String) throws -> TensorInfo {
        func bad(_ detail: String) -> SafeTensorsError { .invalidTensorEntry(file: file, tensor: name, detail: detail) }
        guard let fields = value.objectMembers else { throw bad("entry is \(value.typeName), not an object") }
        var dtype: DType?
        var shape: [Int]?
        var offsets: (UInt64, UInt64)?
        for (key, v) in fields {
            switch key {
            case "dtype":
                guard let s = v.stringValue else { throw bad("dtype is \(v.typeName), not a string") }
                guard let d = DType(rawValue: s) else { throw bad("unknown dtype '\(s)'") }
                dtype = d
            case "shape":
                guard let a = v.arrayValue else { throw bad("shape is \(v.typeName), not an array") }
                shape = try a.map { dim in
                    guard let u = dim.uint64Value else { throw bad("shape holds \(describe(dim)), not a non-negative integer") }
                    guard u <= UInt64(Int.max) else { throw SafeTensorsError.validationOverflow(file: file, tensor: name) }
                    return Int(u)
                }
            case "data_offsets":
                guard let a = v.arrayValue, a.count == 2 else { throw bad("data_offsets must be an array of two integers") }
                guard let b = a[0].uint64Value, let e = a[1].uint64Value else {
                    throw bad("data_offsets must hold non-negative integers")
                }
                offsets = (b, e)
            default:
                continue  // The reference ignores unknown fields.
            }
        }
        guard let dtype else { throw bad("missing field 'dtype'") }
        guard let shape else { throw bad("missing field 'shape'") }
        guard let offsets else { throw bad("missing field 'data_offsets'") }
        return TensorInfo(name: name, dtype: dtype, shape: shape, dataOffsets: offsets)
    }

    private static func describe(_ v: JSONValue) -> String {
        if case let .number(n) = v { return n }
        return v.typeName
    }
}
