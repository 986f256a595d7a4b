import Dispatch
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Sequential file output through `O_DIRECT`: bytes are gathered in page-aligned staging buffers
/// and each full buffer is written straight from memory to the disk by a background queue while the
/// caller fills the next one.
///
/// Why: writing a model through the page cache first copies every byte into freshly allocated cache
/// pages (the dominant cost of a merge, and on virtual machines a very variable one), and an fsync
/// then has to write it all again. Direct writes skip both, so the output is durable when the last
/// write returns, and the caller's page cache (the input model) is not evicted by the output.
///
/// Layout: buffer k holds file bytes `[k·bufferSize, (k+1)·bufferSize)`, written at that offset; the
/// unaligned end of the file (under `alignment` bytes) is written through the page cache by
/// `finish`. A file system without `O_DIRECT` (tmpfs, some FUSE mounts) never gets here: `init`
/// returns nil and the caller writes through the page cache as usual. A direct write refused with
/// EINVAL (a device with coarser alignment) is retried through the page cache, for that buffer and
/// all that follow.
final class DirectWriter {
    /// File offset, length and memory alignment of direct writes (a multiple of every common
    /// logical block size).
    static let alignment = 4096
    /// Linux's `O_DIRECT` (Glibc exports it only under _GNU_SOURCE), per architecture; nil elsewhere.
    #if os(Linux) && (arch(x86_64) || arch(i386))
    static let flag: Int32? = 0o40000
    #elseif os(Linux) && (arch(arm64) || arch(arm))
    static let flag: Int32? = 0o200000
    #else
    static let flag: Int32? = nil
    #endif
    /// Bytes per staging buffer.
    static let bufferSize = 8 << 20
    /// Staging buffers: one being filled, the rest in flight.
    static let bufferCount = 4

    private let fd: Int32
    private let path: String
    private var current: UnsafeMutableRawPointer
    private var filled = 0
    private var fileOffset = 0
    private let pool: Pool
    private let queue = DispatchQueue(label: "lora-tool.writer.direct")
    private let group = DispatchGroup()

    /// Free buffers and the first write error. `@unchecked Sendable`: `free` and `error` are touched
    /// only under `lock`, `buffered` only on the serial write queue; a buffer handed out is owned by
    /// one side at a time (the filler, then the write queue).
    private final class Pool: @unchecked Sendable {
        private let lock = NSLock()
        private let available: DispatchSemaphore
        private var free: [UnsafeMutableRawPointer]
        private(set) var all: [UnsafeMutableRawPointer]
        private var error: (operation: String, errno: Int32)?
        /// Direct writes were refused (EINVAL): the rest goes through the page cache.
        var buffered = false

        init(_ buffers: [UnsafeMutableRawPointer]) {
            all = buffers
            free = buffers
            // Counted up rather than created at its count: libdispatch traps when a semaphore is
            // destroyed below its initial value (a buffer still held when the writer goes away).
            available = DispatchSemaphore(value: 0)
            for _ in buffers { available.signal() }
        }

        func take() -> UnsafeMutableRawPointer {
            available.wait()
            lock.lock()
            defer { lock.unlock() }
            return free.removeLast()
        }

        func give(_ buffer: UnsafeMutableRawPointer) {
            lock.lock()
            free.append(buffer)
            lock.unlock()
            available.signal()
        }

        func fail(_ operation: String, _ code: Int32) {
            lock.lock()
            if error == nil { error = (operation, code) }
            lock.unlock()
        }

        var firstError: (operation: String, errno: Int32)? { lock.lock(); defer { lock.unlock() }; return error }
    }

    /// Switches `fd` (opened for writing at offset 0, empty) to direct I/O; nil when its file system
    /// does not support it or buffers cannot be allocated.
    init?(fd: Int32, path: String) {
        let flags = fcntl(fd, F_GETFL)
        guard let direct = DirectWriter.flag, flags >= 0, fcntl(fd, F_SETFL, flags | direct) == 0 else { return nil }
        var buffers: [UnsafeMutableRawPointer] = []
        for _ in 0..<DirectWriter.bufferCount {
            var p: UnsafeMutableRawPointer?
            guard posix_memalign(&p, DirectWriter.alignment, DirectWriter.bufferSize) == 0, let p else {
                buffers.forEach { free($0) }
                _ = fcntl(fd, F_SETFL, flags)
                return nil
            }
            buffers.append(p)
        }
        self.fd = fd
        self.path = path
        pool = Pool(buffers)
        current = pool.take()
    }

    deinit {
        group.wait()
        pool.all.forEach { free($0) }
    }

    /// Appends `bytes` to the file.
    /// - Throws: `SafeTensorsError.io` for an earlier background write that failed.
    func append(_ bytes: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < bytes.count {
            let n = min(bytes.count - done, DirectWriter.bufferSize - filled)
            (current + filled).copyMemory(from: bytes.baseAddress! + done, byteCount: n)
            filled += n
            done += n
            if filled == DirectWriter.bufferSize { try submitCurrent() }
        }
    }

    /// Appends `count` bytes of file `source` at `offset`, read straight into the staging buffers.
    /// - Throws: `SafeTensorsError.io` when the read fails or the source is shorter than expected.
    func append(from source: Int32, offset: Int, count: Int, sourcePath: String) throws {
        var position = offset, remaining = count
        while remaining > 0 {
            let n = pread(source, current + filled, min(remaining, DirectWriter.bufferSize - filled), off_t(position))
            if n < 0 {
                if errno == EINTR { continue }
                throw SafeTensorsError.io(path: sourcePath, operation: "read", errno: errno)
            }
            if n == 0 { throw SafeTensorsError.io(path: sourcePath, operation: "read (file shrank)", errno: EIO) }
            filled += n
            position += n
            remaining -= n
            if filled == DirectWriter.bufferSize { try submitCurrent() }
        }
    }

    /// Writes what is left and waits for every write; the file is then complete (not yet fsynced).
    /// - Throws: `SafeTensorsError.io` for the first write that failed.
    func finish() throws {
        let aligned = filled / DirectWriter.alignment * DirectWriter.alignment
        let tail = filled - aligned
        let buffer = current, offset = fileOffset
        if aligned > 0 { submit(buffer, count: aligned, at: offset, recycle: false) }
        group.wait()
        if tail > 0 {
            // The unaligned end through the page cache (fsynced with the rest by the caller).
            let flags = fcntl(fd, F_GETFL)
            if flags >= 0 { _ = fcntl(fd, F_SETFL, flags & ~(DirectWriter.flag ?? 0)) }
            if let failure = DirectWriter.writeAll(fd, buffer + aligned, count: tail, at: offset + aligned) {
                pool.fail("write", failure)
            }
        }
        filled = 0
        fileOffset += aligned + tail
        if let e = pool.firstError { throw SafeTensorsError.io(path: path, operation: e.operation, errno: e.errno) }
    }

    private func submitCurrent() throws {
        if let e = pool.firstError { throw SafeTensorsError.io(path: path, operation: e.operation, errno: e.errno) }
        submit(current, count: filled, at: fileOffset, recycle: true)
        fileOffset += filled
        filled = 0
        current = pool.take()
    }

    private func submit(_ buffer: UnsafeMutableRawPointer, count: Int, at offset: Int, recycle: Bool) {
        let fd = self.fd, pool = self.pool
        let address = UInt(bitPattern: buffer)
        queue.async(group: group) {
            let buffer = UnsafeMutableRawPointer(bitPattern: address)!
            defer { if recycle { pool.give(buffer) } }
            guard pool.firstError == nil else { return }
            var failure = pool.buffered ? EINVAL : DirectWriter.writeAll(fd, buffer, count: count, at: offset)
            if failure == EINVAL {
                // The device wants coarser alignment than ours: go on through the page cache.
                let flags = fcntl(fd, F_GETFL)
                if flags >= 0 { _ = fcntl(fd, F_SETFL, flags & ~(DirectWriter.flag ?? 0)) }
                pool.buffered = true
                failure = DirectWriter.writeAll(fd, buffer, count: count, at: offset)
            }
            if let failure { pool.fail("write", failure) }
        }
    }

    /// pwrite until done; the errno of a failure, nil on success.
    static func writeAll(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, count: Int, at offset: Int) -> Int32? {
        var done = 0
        while done < count {
            let n = pwrite(fd, buffer + done, count - done, off_t(offset + done))
            if n < 0 {
                if errno == EINTR { continue }
                return errno
            }
            if n == 0 { return EIO }
            done += n
        }
        return nil
    }
}
