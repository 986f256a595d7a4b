import Foundation
import SafeTensors

/// Reads byte ranges of files straight from the disk (`O_DIRECT`), for `verify`'s exact mode.
///
/// Why: a merged model is read once, right after merge wrote it past the page cache. Read through
/// the cache, every byte would be copied into the cache and again into the block buffer (a third of
/// verify's CPU time on the 1b bench) and would push the base out of the cache. Direct reads land in
/// the buffer once. Where the file system refuses direct I/O (tmpfs, some network file systems),
/// the file is read with plain `pread`.
///
/// `@unchecked Sendable`: `descriptors` is touched only under `lock`; reads use `pread`, which
/// shares no file position between threads.
final class DirectReader: @unchecked Sendable {
    /// Offset, length and memory alignment of direct reads (as of merge's direct writes).
    static let alignment = ChunkedOutput.alignment

    private let lock = NSLock()
    /// Direct descriptor per path; -1 where direct I/O is refused.
    private var descriptors: [String: Int32] = [:]

    deinit { for fd in descriptors.values where fd >= 0 { close(fd) } }

    /// Bytes a buffer needs to read `count` bytes at any offset.
    static func bufferSize(for count: Int) -> Int { count + 2 * alignment }

    /// Reads `count` bytes at `offset` of `file` into `buffer` (4096-aligned, at least
    /// `bufferSize(for: count)` bytes) and returns where in `buffer` they start.
    /// - Throws: `SafeTensorsError.io` when the file cannot be read or is shorter than the range.
    func read(_ file: SafeTensorsFile, at offset: Int, count: Int, into buffer: UnsafeMutableRawPointer) throws -> UnsafeMutableRawPointer {
        let fd = descriptor(file)
        if fd >= 0 {
            let start = offset / DirectReader.alignment * DirectReader.alignment
            let end = (offset + count + DirectReader.alignment - 1) / DirectReader.alignment * DirectReader.alignment
            var done = 0
            while start + done < offset + count {
                let n = pread(fd, buffer + done, end - start - done, off_t(start + done))
                if n < 0 && errno == EINTR { continue }
                if n < 0 && errno == EINVAL { break }  // refused after all: read through the cache
                if n < 0 { throw SafeTensorsError.io(path: file.path, operation: "read", errno: errno) }
                if n == 0 { throw SafeTensorsError.io(path: file.path, operation: "read (file shrank)", errno: EIO) }
                done += n
            }
            if start + done >= offset + count { return buffer + (offset - start) }
        }
        try file.read(at: offset, count: count, into: buffer)
        return buffer
    }

    /// A direct descriptor of what `file` reads: its own open file, reopened through /proc (so a
    /// `.zst` file's decompressed copy, not the compressed bytes, and never a file renamed in since).
    private func descriptor(_ file: SafeTensorsFile) -> Int32 {
        let path = "/proc/self/fd/\(file.map.descriptor)"
        lock.lock()
        defer { lock.unlock() }
        if let fd = descriptors[path] { return fd }
        let fd = file.map.descriptor >= 0 ? (ChunkedOutput.directFlag.map { open(path, O_RDONLY | O_CLOEXEC | $0) } ?? -1) : -1
        descriptors[path] = fd
        return fd
    }
}
