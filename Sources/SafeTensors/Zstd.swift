import CZstd
#if canImport(Glibc)
import Glibc
#endif

/// zstd compression of whole files, streamed in 1 MiB blocks.
///
/// A `*.safetensors.zst` input is bounded by its own header: decompression first produces only the
/// 8-byte length prefix and the header (at most `Header.maximumLength` bytes), validates the header,
/// and computes the exact size the decompressed file must have (8 + N + the data the tensors
/// declare). Reading the header decompresses nothing more; full decompression writes at most that
/// many bytes and stops with an error at the first byte past them, so a small "zstd bomb" cannot
/// fill `$TMPDIR`. Memory stays flat: the header, one 1 MiB output buffer, zstd's input buffer and
/// its window (at most 128 MiB, zstd's default `ZSTD_WINDOWLOG_LIMIT_DEFAULT`, as a frame declares).
public enum Zstd {
    /// The decompressed length prefix and header of a `.safetensors.zst` file, validated.
    public struct HeaderPrefix: Sendable {
        /// The first `8 + headerLength` decompressed bytes: the length prefix and the header.
        public let bytes: [UInt8]
        /// The validated header.
        public let header: Header
        /// Header length N.
        public let headerLength: Int
        /// The exact size the decompressed file must have: 8 + N + `header.dataSize`.
        public let totalSize: UInt64
    }

    /// Size of the output buffer full decompression writes from.
    static let bufferSize = 1 << 20

    /// Decompresses only the length prefix and header of `path` and validates the header; nothing
    /// after the header is decompressed, so the data section is not checked (a truncated or
    /// oversized stream is only found by `decompress(_:into:)`).
    ///
    /// Memory: the header (at most `Header.maximumLength` bytes, grown as it is decompressed, so a
    /// stream that ends early costs only what it held) plus what `Header.parse` needs.
    /// - Throws: `SafeTensorsError` naming `path`: the header errors of `SafeTensorsFile.parse`,
    ///   `.unsupportedInput` for corrupt or truncated zstd data or a file that is not regular.
    public static func readHeader(_ path: String) throws -> HeaderPrefix {
        let reader = try ZstdReader(path: path)
        return try readHeader(reader)
    }

    /// Decompresses `path` into the regular file open on `output` (from its current position) and
    /// returns the header read on the way.
    ///
    /// Writes at most the size the header declares: the first decompressed byte past it stops
    /// decompression with an error, as does a stream that ends short of it. Before writing, the
    /// declared size is compared with the space free on `output`'s file system.
    /// - Returns: the validated prefix; exactly `totalSize` bytes were written.
    /// - Throws: `SafeTensorsError.unsupportedInput` naming `path` with "decompressed data exceeds the
    ///   N bytes its header declares", "decompressed data is truncated …", corrupt or truncated zstd
    ///   data, or too little free space; the header errors of `SafeTensorsFile.parse`; `.io` for I/O.
    @discardableResult
    public static func decompress(_ path: String, into output: Int32) throws -> HeaderPrefix {
        let reader = try ZstdReader(path: path)
        let prefix = try readHeader(reader)
        var fs = statvfs()
        if fstatvfs(output, &fs) == 0 {
            let free = UInt64(fs.f_bavail).multipliedReportingOverflow(by: UInt64(fs.f_frsize))
            if !free.overflow, prefix.totalSize > free.partialValue {
                throw SafeTensorsError.unsupportedInput(
                    path: path, detail: "decompresses to \(prefix.totalSize) bytes, as its header declares, but only \(free.partialValue) bytes are free for the temporary copy")
            }
        }
        try prefix.bytes.withUnsafeBytes { try writeAll(output, $0, path: path) }
        var remaining = prefix.header.dataSize
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: bufferSize, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            // One byte more than is still owed: the first excess byte is caught, and nothing after it.
            let want = Int(min(UInt64(bufferSize), remaining + 1))
            let n = try reader.read(into: buffer, count: want)
            if n == 0 {
                guard remaining == 0 else {
                    throw SafeTensorsError.unsupportedInput(
                        path: path, detail: "decompressed data is truncated: \(prefix.totalSize - remaining) bytes, but its header declares \(prefix.totalSize)")
                }
                return prefix
            }
            guard UInt64(n) <= remaining else {
                throw SafeTensorsError.unsupportedInput(
                    path: path, detail: "decompressed data exceeds the \(prefix.totalSize) bytes its header declares")
            }
            try writeAll(output, UnsafeRawBufferPointer(start: buffer, count: n), path: path)
            remaining -= UInt64(n)
        }
    }

    /// Decompresses `path` into an unlinked temporary file in `$TMPDIR` (else /tmp) and returns its
    /// descriptor (caller closes) with the header read on the way. See `decompress(_:into:)` for
    /// the bounds: the temporary file never grows past the size the header declares.
    /// - Throws: as `decompress(_:into:)`; `.io` when the temporary file cannot be created.
    public static func decompressToTemporaryFile(_ path: String) throws -> (descriptor: Int32, prefix: HeaderPrefix) {
        let dir = getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp"
        var template = Array((dir + "/lora-tool-zstd-XXXXXX").utf8CString)
        let output = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard output >= 0 else { throw SafeTensorsError.io(path: dir, operation: "create temporary file", errno: errno) }
        template.withUnsafeBufferPointer { _ = unlink($0.baseAddress!) }
        do {
            return (output, try decompress(path, into: output))
        } catch {
            close(output)
            throw error
        }
    }

    static func readHeader(_ reader: ZstdReader) throws -> HeaderPrefix {
        let path = reader.path
        var bytes = try reader.readUpTo(8)
        guard bytes.count == 8 else { throw SafeTensorsError.headerTooSmall(file: path, size: bytes.count) }
        let n = bytes.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }.littleEndian
        guard n <= Header.maximumLength else { throw SafeTensorsError.headerTooLarge(file: path, length: n) }
        bytes += try reader.readUpTo(Int(n))
        guard bytes.count == 8 + Int(n) else {
            throw SafeTensorsError.invalidHeaderLength(file: path, length: n, fileSize: bytes.count)
        }
        let header = try bytes.withUnsafeBytes {
            try Header.parse(headerBytes: UnsafeRawBufferPointer(rebasing: $0[8...]), file: path)
        }
        let (total, overflow) = (8 + n).addingReportingOverflow(header.dataSize)
        guard !overflow else {
            throw SafeTensorsError.unsupportedInput(path: path, detail: "header declares more than 2^64 bytes of data")
        }
        return HeaderPrefix(bytes: bytes, header: header, headerLength: Int(n), totalSize: total)
    }

    /// Compresses `source` (a whole file) into `destination` (created, must not exist) at `level`.
    /// - Throws: `SafeTensorsError.io` on I/O errors, `.invalidWrite` when zstd fails.
    public static func compressFile(_ source: String, to destination: String, level: Int32 = 3) throws {
        let input = try RegularFile.open(source)
        defer { close(input) }
        let output = open(destination, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard output >= 0 else { throw SafeTensorsError.io(path: destination, operation: "create", errno: errno) }
        defer { close(output) }
        guard let stream = ZSTD_createCStream() else { throw SafeTensorsError.invalidWrite(path: destination, detail: "cannot create a zstd encoder") }
        defer { ZSTD_freeCStream(stream) }
        _ = ZSTD_initCStream(stream, level)
        let inSize = ZSTD_CStreamInSize(), outSize = ZSTD_CStreamOutSize()
        var inBuf = [UInt8](repeating: 0, count: inSize), outBuf = [UInt8](repeating: 0, count: outSize)
        while true {
            let n = inBuf.withUnsafeMutableBytes { read(input, $0.baseAddress!, inSize) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SafeTensorsError.io(path: source, operation: "read", errno: errno)
            }
            let finishing = n == 0
            try inBuf.withUnsafeBytes { ib in
                var zin = ZSTD_inBuffer(src: ib.baseAddress, size: n, pos: 0)
                var remaining = 1
                while finishing ? remaining != 0 : zin.pos < zin.size {
                    try outBuf.withUnsafeMutableBytes { ob in
                        var zout = ZSTD_outBuffer(dst: ob.baseAddress, size: outSize, pos: 0)
                        let ret = finishing ? ZSTD_endStream(stream, &zout) : ZSTD_compressStream(stream, &zout, &zin)
                        if ZSTD_isError(ret) != 0 {
                            throw SafeTensorsError.invalidWrite(path: destination, detail: "zstd: \(String(cString: ZSTD_getErrorName(ret)))")
                        }
                        remaining = finishing ? ret : 1
                        try writeAll(output, UnsafeRawBufferPointer(start: ob.baseAddress, count: zout.pos), path: destination)
                    }
                }
            }
            if finishing { break }
        }
        guard fsync(output) == 0 else { throw SafeTensorsError.io(path: destination, operation: "fsync", errno: errno) }
    }

    static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, path: String) throws {
        var done = 0
        while done < bytes.count {
            let n = write(fd, bytes.baseAddress! + done, bytes.count - done)
            if n < 0 {
                if errno == EINTR { continue }
                throw SafeTensorsError.io(path: path, operation: "write", errno: errno)
            }
            done += n
        }
    }
}

/// A pull decoder: decompresses a zstd file on demand, as much as the caller asks for and no more.
///
/// `ZSTD_decompressStream` never writes past the output space it is given, so the caller bounds the
/// work by the size of what it asks for. Concatenated frames are read as one stream.
final class ZstdReader {
    let path: String
    private let fd: Int32
    private let stream: OpaquePointer
    private let input: UnsafeMutableRawPointer
    private let inputCapacity: Int
    private var inputCount = 0, inputPosition = 0
    /// The stream stands at a frame boundary: the last call that made progress returned 0 (frame
    /// complete and flushed). A call with no input and no output does not change it (zstd then
    /// answers with the size of the next frame's header).
    private var atFrameEnd = false
    /// The last call filled its output: the decoder may hold more before it needs input.
    private var outputWasFull = false
    private var sawInput = false
    /// Decompressed bytes returned so far.
    private(set) var produced: UInt64 = 0

    init(path: String) throws {
        self.path = path
        fd = try RegularFile.open(path)
        guard let s = ZSTD_createDStream() else {
            close(fd)
            throw SafeTensorsError.unsupportedInput(path: path, detail: "cannot create a zstd decoder")
        }
        stream = s
        inputCapacity = ZSTD_DStreamInSize()
        input = .allocate(byteCount: inputCapacity, alignment: 16)
    }

    deinit {
        ZSTD_freeDStream(stream)
        input.deallocate()
        close(fd)
    }

    /// Decompresses at most `count` bytes into `destination`; returns how many (at least 1 while
    /// `count > 0`), or 0 at the end of the stream.
    /// - Throws: `.unsupportedInput` for corrupt data, a stream that ends mid-frame, or an empty
    ///   file; `.io` for read errors.
    func read(into destination: UnsafeMutableRawPointer, count: Int) throws -> Int {
        guard count > 0 else { return 0 }
        var output = ZSTD_outBuffer(dst: destination, size: count, pos: 0)
        while true {
            if inputPosition == inputCount && !outputWasFull {
                let n = Glibc.read(fd, input, inputCapacity)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw SafeTensorsError.io(path: path, operation: "read", errno: errno)
                }
                if n == 0 { break }
                inputCount = n
                inputPosition = 0
                sawInput = true
            }
            var zin = ZSTD_inBuffer(src: input, size: inputCount, pos: inputPosition)
            let ret = ZSTD_decompressStream(stream, &output, &zin)
            if ZSTD_isError(ret) != 0 {
                throw SafeTensorsError.unsupportedInput(path: path, detail: "corrupt zstd data: \(String(cString: ZSTD_getErrorName(ret)))")
            }
            if ret == 0 || zin.pos != inputPosition || output.pos > 0 { atFrameEnd = ret == 0 }
            inputPosition = zin.pos
            outputWasFull = output.pos == output.size
            if output.pos > 0 {
                produced += UInt64(output.pos)
                return output.pos
            }
        }
        guard sawInput, atFrameEnd else {
            throw SafeTensorsError.unsupportedInput(path: path, detail: sawInput ? "truncated zstd data" : "empty file, not zstd data")
        }
        return 0
    }

    /// Decompresses up to `count` bytes, fewer only at the end of the stream. The array grows as
    /// data arrives, so memory follows what the stream holds, not `count`.
    func readUpTo(_ count: Int) throws -> [UInt8] {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: min(count, Zstd.bufferSize))
        while bytes.count < count {
            let n = try chunk.withUnsafeMutableBytes { try read(into: $0.baseAddress!, count: min($0.count, count - bytes.count)) }
            if n == 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
        }
        return bytes
    }
}
