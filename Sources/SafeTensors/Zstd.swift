import CZstd
#if canImport(Glibc)
import Glibc
#endif

/// zstd compression of whole files, streamed in 1 MiB blocks.
///
/// `*.safetensors.zst` inputs are decompressed as a stream into an unlinked temporary file (in
/// `$TMPDIR`), which is then memory-mapped like any safetensors file: memory stays bounded and
/// nothing is left on disk, even if the process is killed.
public enum Zstd {
    /// Decompresses `path` into an unlinked temporary file and returns its descriptor (caller closes).
    /// - Throws: `SafeTensorsError.unsupportedInput` for corrupt or truncated zstd data; `.io` for I/O.
    public static func decompressToTemporaryFile(_ path: String) throws -> Int32 {
        let input = open(path, O_RDONLY | O_CLOEXEC)
        guard input >= 0 else { throw SafeTensorsError.io(path: path, operation: "open", errno: errno) }
        defer { close(input) }
        let dir = getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp"
        var template = Array((dir + "/lora-tool-zstd-XXXXXX").utf8CString)
        let output = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard output >= 0 else { throw SafeTensorsError.io(path: dir, operation: "create temporary file", errno: errno) }
        template.withUnsafeBufferPointer { _ = unlink($0.baseAddress!) }
        guard let stream = ZSTD_createDStream() else {
            close(output)
            throw SafeTensorsError.unsupportedInput(path: path, detail: "cannot create a zstd decoder")
        }
        defer { ZSTD_freeDStream(stream) }
        let inSize = ZSTD_DStreamInSize(), outSize = ZSTD_DStreamOutSize()
        var inBuf = [UInt8](repeating: 0, count: inSize), outBuf = [UInt8](repeating: 0, count: outSize)
        var last: Int = 0
        var sawInput = false
        do {
            while true {
                let n = inBuf.withUnsafeMutableBytes { read(input, $0.baseAddress!, inSize) }
                if n < 0 {
                    if errno == EINTR { continue }
                    throw SafeTensorsError.io(path: path, operation: "read", errno: errno)
                }
                if n == 0 { break }
                sawInput = true
                try inBuf.withUnsafeBytes { ib in
                    var zin = ZSTD_inBuffer(src: ib.baseAddress, size: n, pos: 0)
                    while zin.pos < zin.size {
                        try outBuf.withUnsafeMutableBytes { ob in
                            var zout = ZSTD_outBuffer(dst: ob.baseAddress, size: outSize, pos: 0)
                            let ret = ZSTD_decompressStream(stream, &zout, &zin)
                            if ZSTD_isError(ret) != 0 {
                                throw SafeTensorsError.unsupportedInput(path: path, detail: "corrupt zstd data: \(String(cString: ZSTD_getErrorName(ret)))")
                            }
                            last = ret
                            try writeAll(output, UnsafeRawBufferPointer(start: ob.baseAddress, count: zout.pos), path: path)
                        }
                    }
                }
            }
            guard sawInput, last == 0 else {
                throw SafeTensorsError.unsupportedInput(path: path, detail: sawInput ? "truncated zstd data" : "empty file, not zstd data")
            }
        } catch {
            close(output)
            throw error
        }
        return output
    }

    /// Compresses `source` (a whole file) into `destination` (created, must not exist) at `level`.
    /// - Throws: `SafeTensorsError.io` on I/O errors, `.invalidWrite` when zstd fails.
    public static func compressFile(_ source: String, to destination: String, level: Int32 = 3) throws {
        let input = open(source, O_RDONLY | O_CLOEXEC)
        guard input >= 0 else { throw SafeTensorsError.io(path: source, operation: "open", errno: errno) }
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

    private static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, path: String) throws {
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
