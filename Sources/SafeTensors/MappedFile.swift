#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A read-only memory map of a whole file.
///
/// The mapping is `PROT_READ`/`MAP_PRIVATE`: nothing can write through it, so inputs are never modified.
/// `@unchecked Sendable` is safe because the base address and size never change after `init` and the
/// bytes are only read.
public final class MappedFile: @unchecked Sendable {
    public let path: String
    public let size: Int
    /// A read-only descriptor of the file, kept open for `copy_file_range` and `pread`; -1 for bytes
    /// held in memory (`init(copying:path:)`).
    public let descriptor: Int32
    private let base: UnsafeRawPointer?

    /// Maps `path` read-only. The file is opened with `RegularFile.open`, so a FIFO, socket, device or
    /// directory is refused by name instead of blocking or being read without end.
    /// - Throws: `SafeTensorsError.unsupportedInput` for a file that is not regular; `.io` when the
    ///   file cannot be opened, stat'ed or mapped.
    public convenience init(path: String) throws {
        let fd = try RegularFile.open(path)
        defer { close(fd) }
        try self.init(descriptor: fd, path: path)
    }

    /// Maps an open descriptor (duplicated: the caller still owns `fd`); `path` is used in messages.
    public init(descriptor fd: Int32, path: String) throws {
        self.path = path
        descriptor = dup(fd)
        guard descriptor >= 0 else { throw SafeTensorsError.io(path: path, operation: "dup", errno: errno) }
        var st = stat()
        do {
            guard fstat(fd, &st) == 0 else { throw SafeTensorsError.io(path: path, operation: "stat", errno: errno) }
            try RegularFile.requireRegular(st, path: path)
        } catch {
            close(descriptor)
            throw error
        }
        size = Int(st.st_size)
        if size == 0 {
            base = nil
            return
        }
        let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0)
        guard let p, p != MAP_FAILED else {
            close(descriptor)
            throw SafeTensorsError.io(path: path, operation: "mmap", errno: errno)
        }
        base = UnsafeRawPointer(p)
    }

    /// A read-only anonymous mapping holding a copy of `bytes`, with no file behind it
    /// (`descriptor` is -1): the length prefix and header of a `.zst` file opened for its header only.
    /// - Throws: `SafeTensorsError.io` when the memory cannot be mapped.
    public init(copying bytes: [UInt8], path: String) throws {
        self.path = path
        descriptor = -1
        let count = bytes.count
        size = count
        if count == 0 {
            base = nil
            return
        }
        let p = mmap(nil, count, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let p, p != MAP_FAILED else { throw SafeTensorsError.io(path: path, operation: "mmap", errno: errno) }
        bytes.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: count) }
        _ = mprotect(p, count, PROT_READ)
        base = UnsafeRawPointer(p)
    }

    deinit {
        if let base { munmap(UnsafeMutableRawPointer(mutating: base), size) }
        if descriptor >= 0 { close(descriptor) }
    }

    /// Drops `[offset, offset+count)` from this process's resident set (the pages stay in the page
    /// cache and are read again on the next access), so streaming a large file keeps RSS flat.
    public func release(offset: Int, count: Int) {
        guard let base, count > 0 else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = (offset + page - 1) / page * page  // only whole pages inside the range
        let end = (offset + count) / page * page
        if end > start { _ = madvise(UnsafeMutableRawPointer(mutating: base + start), end - start, MADV_DONTNEED) }
    }

    /// Asks the kernel to start reading `[offset, offset+count)` into the page cache now
    /// (`MADV_WILLNEED`), so that a file not yet cached is read ahead while earlier data is used.
    public func prefetch(offset: Int, count: Int) {
        guard let base, count > 0 else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = offset / page * page
        guard start < size else { return }
        _ = madvise(UnsafeMutableRawPointer(mutating: base + start), min(size, offset + count) - start, MADV_WILLNEED)
    }

    /// The bytes `[offset, offset + count)`; the caller checked the range against `size`.
    public func bytes(offset: Int, count: Int) -> UnsafeRawBufferPointer {
        precondition(offset >= 0 && count >= 0 && offset + count <= size, "range checked by the caller")
        guard let base else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: base + offset, count: count)
    }

    /// Drops the whole pages inside `bytes` — which must lie in a read-only file mapping — from the
    /// resident set. Never call it on heap memory: the kernel would zero it.
    public static func releasePages(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let startAddress = (Int(bitPattern: base) + page - 1) / page * page
        let endAddress = (Int(bitPattern: base) + bytes.count) / page * page
        guard endAddress > startAddress, let p = UnsafeMutableRawPointer(bitPattern: startAddress) else { return }
        _ = madvise(p, endAddress - startAddress, MADV_DONTNEED)
    }
}
