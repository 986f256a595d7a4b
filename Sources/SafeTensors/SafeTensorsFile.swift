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
        let (header, length) = try SafeTensorsFile.parse(map.bytes(offset: 0, count: map.size), file: path)
        headerLength = length
        tensors = header.tensors
        metadata = header.metadata
        var index: [String: Int] = [:]
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
    public func checkUnchanged() throws {
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
}
