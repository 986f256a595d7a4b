import CFiles
import Dispatch
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A safetensors file written as consecutive fixed-size chunks, each filled by whichever thread
/// claims it and written at its own offset: no thread orders or copies another's bytes.
///
/// The layout (`SafeTensorsWriter.layout`: Python's byte layout) is computed up front, so chunk k
/// always holds file bytes `[k·chunkSize, min((k+1)·chunkSize, fileSize))`, and `segments(ofChunk:)`
/// says which header bytes and which byte ranges of which tensors those are. A filled chunk goes to
/// the disk with direct I/O where the file system supports it (chunks are page-aligned in the file
/// and in memory), else through the page cache; the unaligned end of the last chunk always goes
/// through the page cache. Writes run on a background queue while the filling threads go on with
/// their next chunks; `buffers` bounds the chunks filled or in flight (and so the memory). `finish`
/// waits for them, checks that every chunk was written, then fsyncs (unless not `durable`).
///
/// The file's SHA-256 is computed while writing: each filled chunk is hashed, in file order, by the
/// thread that filled it before its write is queued (a thread whose chunk comes early waits for the
/// ones before it; the others keep filling). With the SHA extensions this costs about 0.5 ms per MiB.
///
/// Why direct I/O: writing a model through the page cache first copies every byte into freshly
/// allocated cache pages (on virtual machines a large and very variable cost), and the fsync then
/// writes it all again. Written directly, the output is on the disk when the last write returns, and
/// the page cache (holding the input model) is not evicted by it. Space is reserved up front, so a
/// disk too small fails before any work. `merge` fills chunks from several threads; `SafeTensorsWriter`
/// fills them in order, one at a time.
public final class ChunkedOutput: @unchecked Sendable {
    /// One contiguous part of a chunk.
    public struct Segment: Sendable, Equatable {
        /// nil for header bytes, else the index into `order`.
        public var tensor: Int?
        /// Bytes of the tensor's data (or of the header) that this segment holds.
        public var bytes: Range<Int>
        /// Where they start inside the chunk.
        public var offsetInChunk: Int
    }

    /// Bytes per `pwrite` through the page cache. One 32 MiB call copies into the page cache at a
    /// tenth of the speed of 1 MiB calls (measured with dd on this project's VM, Linux 6.18 ext4:
    /// 0.54 vs 5.2 GB/s): the kernel's copy into freshly allocated folios slows down with the size
    /// of one call.
    static let pageCacheWrite = 1 << 20

    /// File offset, length and memory alignment of direct writes (a multiple of every common
    /// logical block size).
    public static let alignment = 4096
    /// Linux's `O_DIRECT` (Glibc exports it only under _GNU_SOURCE), per architecture; nil elsewhere.
    #if os(Linux) && (arch(x86_64) || arch(i386))
    public static let directFlag: Int32? = 0o40000
    #elseif os(Linux) && (arch(arm64) || arch(arm))
    public static let directFlag: Int32? = 0o200000
    #else
    public static let directFlag: Int32? = nil
    #endif

    /// Bytes per chunk by default: large direct writes keep the disk busiest (32 MiB measured best
    /// of 8, 16 and 32 on the 1b bench), and a few such buffers are all the memory a merge needs.
    public static let defaultChunkSize = 32 << 20
    /// Bytes per chunk: a multiple of every page and logical block size in use.
    public let chunkSize: Int

    public let path: String
    /// Tensors in file order, with their data offsets.
    public let order: [TensorInfo]
    public let headerBytes: [UInt8]
    public let fileSize: Int
    public var chunkCount: Int { (fileSize + chunkSize - 1) / chunkSize }

    // `@unchecked Sendable`: the descriptors are only written to (pwrite is thread-safe at distinct
    // offsets); `written`, `buffers`, `allocated` and `failure` are touched only under `lock`.
    private let fd: Int32
    private var directFD: Int32 = -1
    private let lock = NSLock()
    private var written: [Bool]
    private var buffers: [UnsafeMutableRawPointer] = []
    private var allocated: [UnsafeMutableRawPointer] = []
    private var failure: SafeTensorsError?
    private var closed = false
    private let durable: Bool
    /// Counts buffers that may be taken (free or not yet allocated).
    private let available = DispatchSemaphore(value: 0)
    /// Concurrent for direct writes (the disk takes several at once); serial through the page cache,
    /// where writers of one file queue on its inode lock and would spin for it on the cores that compute.
    private let writes: DispatchQueue
    private let inFlight = DispatchGroup()
    /// Whether the file is hashed as it is written (`sha256`).
    private let hashing: Bool
    /// The file's hash so far: chunks `0..<hashedChunks` (guarded by `hashTurn`).
    private var hasher = SHA256()
    private var hashedChunks = 0
    private let hashTurn = NSCondition()
    /// The SHA-256 of the whole file (lowercase hex), once `finish` has returned; nil when not `hashing`.
    public private(set) var sha256: String?

    /// Creates `path` (which must not exist) for `tensors`.
    /// - Throws: `SafeTensorsError` from the layout or from creating the file.
    /// - Parameters:
    ///   - chunkSize: bytes per chunk, a multiple of 4096.
    ///   - buffers: chunk buffers at most (filled or being written); at least 1.
    ///   - durable: direct I/O where available and an fsync in `finish`; false writes through the page
    ///     cache and leaves flushing to the kernel, as `cp` does.
    ///   - followers: tensors to place right after others (`SafeTensorsWriter.layout`).
    ///   - hashing: compute the file's SHA-256 while writing (in file order: a serial chain at the SHA
    ///     extensions' ~1.8 GB/s, which on two cores is as much CPU as the rest of a merge).
    public init(path: String, tensors: [TensorInfo], metadata: [(key: String, value: String)]? = [("format", "pt")],
                chunkSize: Int = ChunkedOutput.defaultChunkSize, buffers: Int = 4, durable: Bool = true, followers: [String: String] = [:],
                hashing: Bool = true) throws {
        precondition(chunkSize > 0 && chunkSize % ChunkedOutput.alignment == 0, "chunks are whole pages")
        self.chunkSize = chunkSize
        self.hashing = hashing
        (order, headerBytes) = try SafeTensorsWriter.layout(tensors, metadata: metadata, path: path, followers: followers)
        self.path = path
        fileSize = headerBytes.count + Int(order.last?.dataOffsets.end ?? 0)
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw SafeTensorsError.outputIO(path: path, operation: "create", errno: errno) }
        // Reserve the whole file now: a disk too small fails here, before any work, and writes into
        // allocated extents cost the file system less than allocating as they go.
        let reserved = lora_preallocate(fd, Int64(fileSize))
        if reserved == ENOSPC || reserved == EFBIG || reserved == EDQUOT {
            close(fd)
            throw SafeTensorsError.outputIO(path: path, operation: "reserve space (\(fileSize) bytes)", errno: reserved)
        }
        written = Array(repeating: false, count: (fileSize + chunkSize - 1) / chunkSize)
        self.durable = durable
        if durable, let flag = ChunkedOutput.directFlag {
            directFD = open(path, O_WRONLY | O_CLOEXEC | flag)  // -1 where the file system has no direct I/O
        }
        writes = DispatchQueue(label: "lora-tool.chunked-output", attributes: directFD >= 0 ? .concurrent : [])
        // Counted up rather than created at its count: libdispatch traps when a semaphore is
        // destroyed below its initial value.
        for _ in 0..<max(1, buffers) { available.signal() }
    }

    deinit {
        inFlight.wait()
        if !closed {
            close(fd)
            if directFD >= 0 { close(directFD) }
        }
        allocated.forEach { munmap($0, chunkSize) }
    }

    /// The header bytes and tensor byte ranges that chunk `k` holds, in file order.
    public func segments(ofChunk k: Int) -> [Segment] {
        let start = k * chunkSize, end = min(start + chunkSize, fileSize)
        var result: [Segment] = []
        if start < headerBytes.count {
            result.append(Segment(tensor: nil, bytes: start..<min(end, headerBytes.count), offsetInChunk: 0))
        }
        let dataStart = headerBytes.count
        // The first tensor whose data ends after `start` (binary search: order is by offset).
        var lo = 0, hi = order.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if dataStart + Int(order[mid].dataOffsets.end) <= start { lo = mid + 1 } else { hi = mid }
        }
        var i = lo
        while i < order.count, dataStart + Int(order[i].dataOffsets.begin) < end {
            let begin = dataStart + Int(order[i].dataOffsets.begin), finish = dataStart + Int(order[i].dataOffsets.end)
            let from = max(begin, start), to = min(finish, end)
            if from < to { result.append(Segment(tensor: i, bytes: (from - begin)..<(to - begin), offsetInChunk: from - start)) }
            i += 1
        }
        return result
    }

    /// Fills chunk `k` with `fill` (given a page-aligned buffer of exactly the chunk's length) and
    /// queues its write at its offset. Safe to call from several threads for different chunks.
    /// - Throws: what `fill` throws; `SafeTensorsError.io` when an earlier write failed.
    public func write(chunk k: Int, _ fill: (UnsafeMutableRawBufferPointer) throws -> Void) throws {
        let length = min(chunkSize, fileSize - k * chunkSize)
        let buffer: UnsafeMutableRawPointer
        do {
            buffer = try takeBuffer()
        } catch {
            abandon()
            throw error
        }
        do {
            try fill(UnsafeMutableRawBufferPointer(start: buffer, count: length))
        } catch {
            giveBuffer(buffer)
            abandon()
            throw error
        }
        hash(chunk: k, UnsafeRawBufferPointer(start: buffer, count: length))
        submit(chunk: k, buffer: buffer, length: length)
    }

    /// Adds chunk `k` to the file's hash once chunks `0..<k` are in it. Chunks are claimed in order
    /// and a waiting thread holds only its own buffer, so the one the hash waits for always gets one.
    func hash(chunk k: Int, _ bytes: UnsafeRawBufferPointer) {
        guard hashing else { return }
        hashTurn.lock()
        while hashedChunks != k {
            if failureHappened {
                hashTurn.unlock()
                return
            }
            hashTurn.wait()
        }
        hasher.update(bytes)
        hashedChunks += 1
        hashTurn.broadcast()
        hashTurn.unlock()
    }

    /// Whether a write failed or a filler gave up (a chunk may then never be hashed): waiting threads stop.
    private var failureHappened: Bool {
        lock.lock()
        defer { lock.unlock() }
        return failure != nil || abandoned
    }
    private var abandoned = false

    /// Tells threads waiting to hash their chunk that an earlier chunk will never come (its filler
    /// failed); the file is then not finished.
    func abandon() {
        lock.lock()
        abandoned = true
        lock.unlock()
        hashTurn.lock()
        hashTurn.broadcast()
        hashTurn.unlock()
    }

    /// Queues the write of chunk `k` from `buffer` (from `takeBuffer`, holding the chunk's `length`
    /// bytes); the buffer comes back to the pool once written.
    func submit(chunk k: Int, buffer: UnsafeMutableRawPointer, length: Int) {
        let start = k * chunkSize
        let address = UInt(bitPattern: buffer)
        writes.async(group: inFlight) { [self] in
            let buffer = UnsafeMutableRawPointer(bitPattern: address)!
            defer { giveBuffer(buffer) }
            do {
                try store(buffer, length: length, at: start)
                lock.lock()
                written[k] = true
                lock.unlock()
            } catch let e as SafeTensorsError {
                lock.lock()
                if failure == nil { failure = e }
                lock.unlock()
            } catch {}
        }
    }

    /// Writes one filled chunk: its aligned part directly, the rest through the page cache.
    private func store(_ buffer: UnsafeMutableRawPointer, length: Int, at start: Int) throws {
        var aligned = length / ChunkedOutput.alignment * ChunkedOutput.alignment
        if directFD >= 0, aligned > 0 {
            if let failure = ChunkedOutput.writeAll(directFD, buffer, count: aligned, at: start) {
                // EINVAL: this device wants coarser alignment; everything through the page cache.
                guard failure == EINVAL else { throw SafeTensorsError.outputIO(path: path, operation: "write", errno: failure) }
                aligned = 0
            }
        } else {
            aligned = 0
        }
        if let failure = ChunkedOutput.writeAll(fd, buffer + aligned, count: length - aligned, at: start + aligned, piece: ChunkedOutput.pageCacheWrite) {
            throw SafeTensorsError.outputIO(path: path, operation: "write", errno: failure)
        }
    }

    /// Checks that every chunk was written, fsyncs (when `durable`) and closes the file.
    /// - Throws: `.invalidWrite` for a chunk never written; `.io` when fsync or close fails.
    public func finish() throws {
        inFlight.wait()
        lock.lock()
        let failed = failure
        lock.unlock()
        if let failed { throw failed }
        if let missing = written.firstIndex(of: false) {
            throw SafeTensorsError.invalidWrite(path: path, detail: "chunk \(missing) of \(written.count) was never written")
        }
        if durable, fsync(fd) != 0 { throw SafeTensorsError.outputIO(path: path, operation: "fsync", errno: errno) }
        sha256 = hashing ? hasher.finalize() : nil
        closed = true
        if directFD >= 0 { close(directFD) }
        guard close(fd) == 0 else { throw SafeTensorsError.outputIO(path: path, operation: "close", errno: errno) }
    }

    /// A page-aligned chunk buffer: a free one, a new one while fewer than `buffers` exist, or the
    /// next one a finished write gives back.
    /// - Throws: the first failed write (so that fillers stop), or ENOMEM.
    func takeBuffer() throws -> UnsafeMutableRawPointer {
        available.wait()
        lock.lock()
        if let failure {
            lock.unlock()
            available.signal()
            throw failure
        }
        if let b = buffers.popLast() {
            lock.unlock()
            return b
        }
        lock.unlock()
        // Mapped directly rather than from malloc: page-aligned by construction, and returned to the
        // kernel when the file is done instead of fragmenting the heap that tensors come and go in.
        let m = mmap(nil, chunkSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let m, m != MAP_FAILED else {
            available.signal()
            throw SafeTensorsError.io(path: path, operation: "allocate a write buffer", errno: errno)
        }
        let p = UnsafeMutableRawPointer(m)
        lock.lock()
        allocated.append(p)
        lock.unlock()
        return p
    }

    func giveBuffer(_ b: UnsafeMutableRawPointer) {
        lock.lock()
        buffers.append(b)
        lock.unlock()
        available.signal()
    }

    /// pwrite until done; the errno of a failure, nil on success.
    static func writeAll(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, count: Int, at offset: Int, piece: Int = .max) -> Int32? {
        var done = 0
        while done < count {
            let n = pwrite(fd, buffer + done, min(piece, count - done), off_t(offset + done))
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
