#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Opening input files so that a hostile path can never block or cost more than its size.
///
/// A plain `open(O_RDONLY)` of a FIFO blocks until a writer appears (forever, for a FIFO nobody
/// writes), and reading a character device such as `/dev/zero` never ends. Every input that
/// SafeTensors reads goes through `open(_:)`, which refuses anything but a regular file, by name,
/// before reading a byte; small JSON side files go through `readAll(_:limit:)`, which also caps
/// their size.
public enum RegularFile {
    /// Opens `path` read-only and returns the descriptor (the caller closes it).
    ///
    /// The path is `stat`ed first, so a device, FIFO, socket or directory is refused without being
    /// opened (opening some devices has side effects). It is then opened with
    /// `O_RDONLY | O_NONBLOCK | O_CLOEXEC`, so that a FIFO swapped in after the `stat` cannot block
    /// the open, checked again with `fstat` (that is the check that counts), and `O_NONBLOCK` is
    /// cleared. Symbolic links are followed.
    /// - Parameter path: the file to open; it also names the file in errors.
    /// - Returns: a descriptor of a regular file, positioned at offset 0.
    /// - Throws: `SafeTensorsError.unsupportedInput` with detail "not a regular file (a FIFO)" (or
    ///   a socket, a character device, a block device, a directory); `SafeTensorsError.io` when
    ///   the path does not exist or cannot be opened.
    public static func open(_ path: String) throws -> Int32 {
        var st = stat()
        guard stat(path, &st) == 0 else { throw SafeTensorsError.io(path: path, operation: "open", errno: errno) }
        try requireRegular(st, path: path)
        var fd: Int32
        repeat { fd = openNonBlocking(path) } while fd < 0 && errno == EINTR
        guard fd >= 0 else {
            // ENXIO: a socket (or a FIFO with no writer) took the file's place after the stat.
            throw SafeTensorsError.io(path: path, operation: "open", errno: errno)
        }
        do {
            guard fstat(fd, &st) == 0 else { throw SafeTensorsError.io(path: path, operation: "stat", errno: errno) }
            try requireRegular(st, path: path)
            let flags = fcntl(fd, F_GETFL)
            guard flags >= 0, fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) == 0 else {
                throw SafeTensorsError.io(path: path, operation: "fcntl", errno: errno)
            }
        } catch {
            close(fd)
            throw error
        }
        return fd
    }

    /// Reads the whole of a small regular file (a JSON index or config) into memory.
    ///
    /// Memory is at most `limit` bytes: a file larger than `limit` is refused from its size before
    /// anything is read, and reading stops at `limit + 1` bytes should it grow meanwhile.
    /// - Parameters:
    ///   - path: the file to read (opened with `open(_:)`, so never a FIFO, socket or device).
    ///   - limit: the largest size accepted, in bytes.
    /// - Returns: the file's bytes.
    /// - Throws: `SafeTensorsError.unsupportedInput` for a non-regular file or one larger than
    ///   `limit` ("is 12345 bytes, more than the 1000-byte limit for this file"); `.io` on read errors.
    public static func readAll(_ path: String, limit: Int) throws -> [UInt8] {
        let fd = try open(path)
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw SafeTensorsError.io(path: path, operation: "stat", errno: errno) }
        func tooLarge(_ size: String) -> SafeTensorsError {
            .unsupportedInput(path: path, detail: "is \(size) bytes, more than the \(limit)-byte limit for this file")
        }
        if Int(st.st_size) > limit { throw tooLarge("\(st.st_size)") }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(min(Int(st.st_size), limit) + 1)
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            // Ask for at most one byte past the limit, so a file that grew since fstat is caught.
            let want = min(chunk.count, limit + 1 - bytes.count)
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress!, want) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SafeTensorsError.io(path: path, operation: "read", errno: errno)
            }
            if n == 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
            if bytes.count > limit { throw tooLarge("at least \(bytes.count)") }  // it grew while read
        }
        return bytes
    }

    /// Throws `unsupportedInput` naming the file type unless `st` describes a regular file.
    static func requireRegular(_ st: stat, path: String) throws {
        let type = st.st_mode & S_IFMT
        guard type != S_IFREG else { return }
        let kind: String
        switch type {
        case S_IFIFO: kind = "a FIFO"
        case S_IFSOCK: kind = "a socket"
        case S_IFCHR: kind = "a character device"
        case S_IFBLK: kind = "a block device"
        case S_IFDIR: kind = "a directory"
        case S_IFLNK: kind = "a symbolic link"
        default: kind = "file type 0o" + String(type, radix: 8)
        }
        throw SafeTensorsError.unsupportedInput(path: path, detail: "not a regular file (\(kind))")
    }
}

/// `open(2)` without blocking on a FIFO; outside `RegularFile` so that the name means the C function.
private func openNonBlocking(_ path: String) -> Int32 {
    open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
}
