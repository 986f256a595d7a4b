#if canImport(Glibc)
import Glibc
#endif

/// One safetensors file, memory-mapped; opening it reads only the header.
///
/// Tensor data stays in the page cache until `bytes(of:)` is read, so a multi-GB file opens in
/// milliseconds. Data may be unaligned (pre-0.3 writers); read it with `loadUnaligned` or copy it.
///
/// Memory: the parsed header plus a name → position table, about 150 bytes per tensor plus its
/// name, and while opening what `Header.parse` needs; the data is mapped, not read.
public final class SafeTensorsFile: Sendable {
    public let path: String
    /// The file's bytes. For a `.zst` file opened with `headerOnly`, only the length prefix and
    /// header, held in memory (`hasData` is false).
    public let map: MappedFile
    /// Header length N (the JSON and its padding).
    public let headerLength: Int
    /// Tensors in data order.
    public let tensors: [TensorInfo]
    /// `__metadata__`, or nil when absent.
    public let metadata: [(key: String, value: String)]?
    /// False for a `.zst` file opened with `headerOnly`: its tensor data was never decompressed, so
    /// `bytes(of:)` must not be called, and `read(at:count:into:)` and `checkUnchanged()` throw.
    public let hasData: Bool
    private let byName: [String: Int]

    /// Opens and validates `path`.
    ///
    /// A plain file is memory-mapped (whether or not `headerOnly` is set: mapping costs nothing
    /// until the data is read) and fully validated, data size included. A `.zst` file is
    /// decompressed as a stream (see `Zstd`): with `headerOnly`, only its length prefix and header,
    /// and the data section is not checked; otherwise into an unlinked temporary file, never larger
    /// than its header declares. Every input is opened with `RegularFile.open`, so a FIFO, socket,
    /// device or directory is refused by name rather than blocking.
    /// - Parameters:
    ///   - path: a `.safetensors` file, or a zstd-compressed `.zst` one.
    ///   - headerOnly: read only what describes the tensors (what `inspect` needs).
    /// - Throws: `SafeTensorsError` for every malformation the reference rejects, a non-regular file,
    ///   and corrupt, truncated or oversized zstd data.
    public init(path: String, headerOnly: Bool = false) throws {
        self.path = path
        let header: Header
        if path.hasSuffix(".zst") {
            if headerOnly {
                let prefix = try Zstd.readHeader(path)
                map = try MappedFile(copying: prefix.bytes, path: path)
                header = prefix.header
                headerLength = prefix.headerLength
                hasData = false
            } else {
                let (fd, prefix) = try Zstd.decompressToTemporaryFile(path)
                defer { close(fd) }
                map = try MappedFile(descriptor: fd, path: path)
                guard UInt64(map.size) == prefix.totalSize else {  // decompress wrote exactly this much
                    throw SafeTensorsError.unsupportedInput(path: path, detail: "decompressed copy changed size")
                }
                header = prefix.header
                headerLength = prefix.headerLength
                hasData = true
            }
        } else {
            map = try MappedFile(path: path)
            let (parsed, length) = try SafeTensorsFile.parse(map.bytes(offset: 0, count: map.size), file: path)
            header = parsed
            headerLength = length
            hasData = true
        }
        tensors = header.tensors
        metadata = header.metadata
        var index: [String: Int] = [:]
        index.reserveCapacity(tensors.count)
        for (i, t) in tensors.enumerated() { index[t.name] = i }
        byName = index
    }

    /// Validates a whole safetensors file held in `bytes` (the length prefix, the header, and that the
    /// tensors tile the data exactly) and returns its header and header length. Used for mapped files
    /// and by the fuzz target.
    /// - Throws: `SafeTensorsError` naming `file`.
    public static func parse(_ bytes: UnsafeRawBufferPointer, file: String) throws -> (Header, Int) {
        guard bytes.count >= 8 else { throw SafeTensorsError.headerTooSmall(file: file, size: bytes.count) }
        let n = bytes.loadUnaligned(as: UInt64.self).littleEndian
        guard n <= Header.maximumLength else { throw SafeTensorsError.headerTooLarge(file: file, length: n) }
        guard 8 + Int(n) <= bytes.count else {
            throw SafeTensorsError.invalidHeaderLength(file: file, length: n, fileSize: bytes.count)
        }
        let header = try Header.parse(
            headerBytes: UnsafeRawBufferPointer(rebasing: bytes[8..<(8 + Int(n))]),
            dataSize: UInt64(bytes.count - 8 - Int(n)), file: file)
        return (header, Int(n))
    }

    /// Throws if the file no longer has the size it had when mapped: reading a mapping past the end
    /// of a file that shrank would kill the process with SIGBUS.
    /// - Throws: `.unsupportedInput` when the size changed, or when the file was opened header-only
    ///   (there is no data to read); `.io` when fstat fails.
    public func checkUnchanged() throws {
        try requireData()
        var st = stat()
        guard fstat(map.descriptor, &st) == 0 else { throw SafeTensorsError.io(path: path, operation: "stat", errno: errno) }
        guard Int(st.st_size) == map.size else {
            throw SafeTensorsError.unsupportedInput(
                path: path, detail: "file changed size while in use (\(map.size) → \(st.st_size) bytes); was it modified or truncated?")
        }
    }

    /// Copies `count` bytes at file offset `offset` into `destination` with pread: a kernel copy from
    /// the page cache (of the decompressed copy for a .zst file) that maps nothing into this process.
    /// - Throws: `SafeTensorsError.io` naming the file when the read fails or comes up short.
    public func read(at offset: Int, count: Int, into destination: UnsafeMutableRawPointer) throws {
        try requireData()
        var done = 0
        while done < count {
            let n = pread(map.descriptor, destination + done, count - done, off_t(offset + done))
            if n < 0 {
                if errno == EINTR { continue }
                throw SafeTensorsError.io(path: path, operation: "read", errno: errno)
            }
            if n == 0 { throw SafeTensorsError.io(path: path, operation: "read (file shrank)", errno: EIO) }
            done += n
        }
    }

    private func requireData() throws {
        guard hasData else {
            throw SafeTensorsError.unsupportedInput(
                path: path, detail: "opened for its header only; the tensor data of this compressed file was not decompressed")
        }
    }

    /// File offset where the data section begins.
    public var dataStart: Int { 8 + headerLength }

    /// Position of `name` in `tensors`, or nil.
    public func position(of name: String) -> Int? { byName[name] }

    /// The header entry for `name`, or nil.
    public func info(_ name: String) -> TensorInfo? { byName[name].map { tensors[$0] } }

    /// The raw little-endian bytes of `tensor` inside the map. Valid while this file is alive.
    /// Must not be called on a file opened header-only (`hasData` false): use `Checkpoint.bytes(of:)`
    /// or `read(at:count:into:)`, which throw instead.
    public func bytes(of tensor: TensorInfo) -> UnsafeRawBufferPointer {
        precondition(hasData, "\(path) was opened header-only; its tensor data is not available")
        return map.bytes(offset: dataStart + Int(tensor.dataOffsets.begin), count: tensor.byteCount)
    }

    /// Drops the mapped pages of `tensor` from the resident set once it has been used.
    public func release(_ tensor: TensorInfo) {
        map.release(offset: dataStart + Int(tensor.dataOffsets.begin), count: tensor.byteCount)
    }
}
