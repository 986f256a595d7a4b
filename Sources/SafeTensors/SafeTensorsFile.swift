#if canImport(Glibc)
import Glibc
#endif

/// One safetensors file, memory-mapped; opening it reads only the header.
///
/// Tensor data stays in the page cache until `bytes(of:)` is read, so a multi-GB file opens in
/// milliseconds. Data may be unaligned (pre-0.3 writers); read it with `loadUnaligned` or copy it.
public final class SafeTensorsFile: Sendable {
    public let path: String
    public let map: MappedFile
    /// Header length N (the JSON and its padding).
    public let headerLength: Int
    /// Tensors in data order.
    public let tensors: [TensorInfo]
    /// `__metadata__`, or nil when absent.
    public let metadata: [(key: String, value: String)]?
    private let byName: [String: Int]

    /// Opens and validates `path`; a `.zst` file is first decompressed as a stream (see `Zstd`).
    /// - Throws: `SafeTensorsError` for every malformation the reference rejects.
    public init(path: String) throws {
        self.path = path
        if path.hasSuffix(".zst") {
            let fd = try Zstd.decompressToTemporaryFile(path)
            defer { close(fd) }
            map = try MappedFile(descriptor: fd, path: path)
        } else {
            map = try MappedFile(path: path)
        }
        guard map.size >= 8 else { throw SafeTensorsError.headerTooSmall(file: path, size: map.size) }
        let n = map.bytes(offset: 0, count: 8).loadUnaligned(as: UInt64.self).littleEndian
        guard n <= Header.maximumLength else { throw SafeTensorsError.headerTooLarge(file: path, length: n) }
        guard 8 + Int(n) <= map.size else {
            throw SafeTensorsError.invalidHeaderLength(file: path, length: n, fileSize: map.size)
        }
        headerLength = Int(n)
        let header = try Header.parse(
            headerBytes: map.bytes(offset: 8, count: headerLength),
            dataSize: UInt64(map.size - 8 - headerLength), file: path)
        tensors = header.tensors
        metadata = header.metadata
        var index: [String: Int] = [:]
        for (i, t) in tensors.enumerated() { index[t.name] = i }
        byName = index
    }

    /// File offset where the data section begins.
    public var dataStart: Int { 8 + headerLength }

    /// Position of `name` in `tensors`, or nil.
    public func position(of name: String) -> Int? { byName[name] }

    /// The header entry for `name`, or nil.
    public func info(_ name: String) -> TensorInfo? { byName[name].map { tensors[$0] } }

    /// The raw little-endian bytes of `tensor` inside the map. Valid while this file is alive.
    public func bytes(of tensor: TensorInfo) -> UnsafeRawBufferPointer {
        map.bytes(offset: dataStart + Int(tensor.dataOffsets.begin), count: tensor.byteCount)
    }

    /// Drops the mapped pages of `tensor` from the resident set once it has been used.
    public func release(_ tensor: TensorInfo) {
        map.release(offset: dataStart + Int(tensor.dataOffsets.begin), count: tensor.byteCount)
    }

    /// Names sorted by UTF-8 bytes.
    public var sortedNames: [String] { tensors.map(\.name).sorted(by: utf8Precedes) }
}
