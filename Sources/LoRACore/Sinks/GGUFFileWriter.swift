import Foundation
import SafeTensors

/// A file written front to back (one owner, never shared between threads) with `pwrite`, hashed (SHA-256) as it goes: the GGUF sink's output.
final class GGUFFileWriter {
    let path: String
    private var fd: Int32
    private(set) var position = 0
    private var hasher = SHA256()
    private static let zeros = [UInt8](repeating: 0, count: 4096)

    /// Creates `path` (which must not exist) and reserves `size` bytes.
    /// - Throws: `SafeTensorsError.outputIO`.
    init(path: String, size: Int) throws {
        self.path = path
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw SafeTensorsError.outputIO(path: path, operation: "create", errno: errno) }
        let r = posix_fallocate(fd, 0, off_t(size))
        if r == ENOSPC || r == EFBIG || r == EDQUOT {
            close(fd)
            throw SafeTensorsError.outputIO(path: path, operation: "reserve space (\(size) bytes)", errno: r)
        }
    }

    /// Appends `bytes`.
    func append(_ bytes: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < bytes.count {
            let n = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(position + done))
            if n < 0 {
                if errno == EINTR { continue }
                throw SafeTensorsError.outputIO(path: path, operation: "write", errno: errno)
            }
            done += n
        }
        hasher.update(bytes)
        position += bytes.count
    }

    /// Appends zeros up to file offset `offset`.
    func pad(to offset: Int) throws {
        while position < offset {
            let n = min(GGUFFileWriter.zeros.count, offset - position)
            try GGUFFileWriter.zeros.withUnsafeBytes { try append(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
        }
    }

    /// Flushes (fsync when `durable`), closes, and returns the file's SHA-256 (lowercase hex).
    func finish(durable: Bool) throws -> String {
        let descriptor = fd
        fd = -1
        if durable && fsync(descriptor) != 0 {
            let e = errno
            close(descriptor)
            throw SafeTensorsError.outputIO(path: path, operation: "fsync", errno: e)
        }
        guard close(descriptor) == 0 else { throw SafeTensorsError.outputIO(path: path, operation: "close", errno: errno) }
        return hasher.finalize()
    }

    /// Closes the file if `finish` was not reached (an error: the staging output is removed by its owner).
    deinit { if fd >= 0 { close(fd) } }
}
