import Foundation
import SafeTensors

/// A file written front to back with `pwrite`, hashed (SHA-256) as it goes when asked: the GGUF sinks' output.
///
/// Appends are queued and run in order on one background thread, so the caller goes on computing
/// the next bytes while earlier ones are hashed and written; at most `depth` appends wait in the
/// queue (the memory they hold is bounded by the caller's pieces). `position` counts the bytes
/// appended so far, queued or written. One owner appends (never two threads at once); `finish`
/// waits for the queue and reports the first failure. When the file is to be durable, the written
/// bytes are handed to the disk every `writebackStep` bytes (`Writeback`), so the final fsync waits
/// only for the last of them.
final class GGUFFileWriter: @unchecked Sendable {
    let path: String
    /// Bytes appended so far (queued or written); touched only by the owner.
    private(set) var position = 0
    /// Appends that may be queued at once.
    static let depth = 16
    /// Bytes per `pwrite` (through the page cache, large single calls copy more slowly: see `ChunkedOutput`).
    static let piece = 1 << 20
    /// Bytes written between two starts of writeback.
    static let writebackStep = 32 << 20
    private static let zeros = [UInt8](repeating: 0, count: 4096)

    // `@unchecked Sendable`: `fd` and `hasher` are used only on `queue` once created (and by
    // `finish`/`deinit` after it drained); `failure` only under `lock`.
    private var fd: Int32
    private var hasher: SHA256?
    private let queue = DispatchQueue(label: "lora-tool.gguf-writer")
    private let pending = DispatchGroup()
    private let slots = DispatchSemaphore(value: 0)
    private let lock = NSLock()
    private var failure: (any Error)?
    private let durable: Bool
    /// Bytes handed to the disk so far (on the queue only).
    private var writtenBack = 0

    /// Creates `path` (which must not exist) and reserves `size` bytes.
    /// - Parameters:
    ///   - durable: start the writeback as the file grows (for `finish(durable: true)`).
    ///   - hashing: compute the file's SHA-256 (`finish` returns it).
    /// - Throws: `SafeTensorsError.outputIO`.
    init(path: String, size: Int, durable: Bool, hashing: Bool) throws {
        self.path = path
        self.durable = durable
        hasher = hashing ? SHA256() : nil
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw SafeTensorsError.outputIO(path: path, operation: "create", errno: errno) }
        let r = posix_fallocate(fd, 0, off_t(size))
        if r == ENOSPC || r == EFBIG || r == EDQUOT {
            close(fd)
            throw SafeTensorsError.outputIO(path: path, operation: "reserve space (\(size) bytes)", errno: r)
        }
        // Counted up rather than created at its count: libdispatch traps when a semaphore is
        // destroyed below its initial value.
        for _ in 0..<GGUFFileWriter.depth { slots.signal() }
    }

    /// Queues `bytes` to be appended.
    /// - Throws: `SafeTensorsError.outputIO` when an earlier write failed.
    func append(_ bytes: [UInt8]) throws {
        try enqueue(count: bytes.count) { writer, at in
            try bytes.withUnsafeBytes { try writer.write($0, at: at) }
        }
    }

    /// Queues bytes of a mapping that outlives this writer's `finish` (a base file's tensor), and
    /// when `releasingPages`, gives their pages back to the kernel once written.
    /// - Throws: `SafeTensorsError.outputIO` when an earlier write failed.
    func append(mapped bytes: UnsafeRawBufferPointer, releasingPages: Bool) throws {
        let (address, count) = (UInt(bitPattern: bytes.baseAddress), bytes.count)
        try enqueue(count: count) { writer, at in
            let mapped = UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: address), count: count)
            try writer.write(mapped, at: at)
            if releasingPages { MappedFile.releasePages(mapped) }
        }
    }

    /// Queues zeros up to file offset `offset`.
    func pad(to offset: Int) throws {
        guard position < offset else { return }
        try enqueue(count: offset - position) { writer, at in
            var done = 0
            while done < offset - at {
                let n = min(GGUFFileWriter.zeros.count, offset - at - done)
                try GGUFFileWriter.zeros.withUnsafeBytes { try writer.write(UnsafeRawBufferPointer(rebasing: $0[0..<n]), at: at + done) }
                done += n
            }
        }
    }

    /// Waits for the queued appends, flushes (fsync when `durable`), closes, and returns the file's
    /// - Returns: the SHA-256 (lowercase hex) when hashing, else nil.
    /// - Throws: `SafeTensorsError.outputIO` for the first failed write, fsync or close.
    func finish(durable: Bool) throws -> String? {
        pending.wait()
        if let failure = currentFailure { throw failure }
        let descriptor = fd
        fd = -1
        if durable && fsync(descriptor) != 0 {
            let e = errno
            close(descriptor)
            throw SafeTensorsError.outputIO(path: path, operation: "fsync", errno: e)
        }
        guard close(descriptor) == 0 else { throw SafeTensorsError.outputIO(path: path, operation: "close", errno: errno) }
        return hasher?.finalize()
    }

    /// Closes the file if `finish` was not reached (an error: the staging output is removed by its owner).
    deinit {
        pending.wait()
        if fd >= 0 { close(fd) }
    }

    // MARK: - The queue

    private var currentFailure: (any Error)? {
        lock.lock()
        defer { lock.unlock() }
        return failure
    }

    /// Queues `work` (given this writer and the file offset of its `count` bytes) after the appends
    /// before it; waits while `depth` are queued. A failed write skips every later one.
    private func enqueue(count: Int, _ work: @escaping @Sendable (GGUFFileWriter, Int) throws -> Void) throws {
        if let failure = currentFailure { throw failure }
        let at = position
        position += count
        slots.wait()
        queue.async(group: pending) { [self] in
            defer { slots.signal() }
            guard currentFailure == nil else { return }
            do {
                try work(self, at)
            } catch {
                lock.lock()
                if failure == nil { failure = error }
                lock.unlock()
            }
        }
    }

    /// Writes and hashes `bytes` at offset `at` (on the queue), `piece` bytes per call.
    private func write(_ bytes: UnsafeRawBufferPointer, at: Int) throws {
        var done = 0
        while done < bytes.count {
            let n = pwrite(fd, bytes.baseAddress! + done, min(GGUFFileWriter.piece, bytes.count - done), off_t(at + done))
            if n < 0 {
                if errno == EINTR { continue }
                throw SafeTensorsError.outputIO(path: path, operation: "write", errno: errno)
            }
            done += n
        }
        hasher?.update(bytes)
        let end = at + bytes.count
        if durable && end - writtenBack >= GGUFFileWriter.writebackStep {
            Writeback.start(fd, offset: writtenBack, count: end - writtenBack)
            writtenBack = end
        }
    }
}
