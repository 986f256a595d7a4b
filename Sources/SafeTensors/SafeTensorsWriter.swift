import Dispatch
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Streams one safetensors file to disk, tensor by tensor, in the byte layout of Python's
/// `safetensors.save_file`.
///
/// The header is computed up front from names, dtypes and shapes: tensors ordered by descending
/// dtype alignment then name bytes, offsets consecutive from 0, compact JSON padded with spaces to a
/// multiple of 8. Data must then be appended in `order`. Nothing is held in memory but a write buffer.
///
/// Where the file system supports it, bytes go to the disk with direct I/O (`DirectWriter`), which
/// makes the final fsync nearly free; elsewhere through the page cache, with writeback started every
/// 256 MB so the final fsync has little left to wait for.
public final class SafeTensorsWriter {
    /// Tensors in write order, with their data offsets.
    public let order: [TensorInfo]
    /// The 8-byte length plus padded JSON.
    public let headerBytes: [UInt8]
    public let path: String
    private var fd: Int32
    private var next = 0
    /// Bytes of `order[next]` already written by `writeChunk`.
    private var partial = 0
    private var buffer: [UInt8] = []
    /// Direct-I/O staging, or nil when writing through the page cache.
    private var direct: DirectWriter?
    private static let bufferLimit = 8 << 20
    /// Bytes written since the last background `fdatasync` was started.
    private var unsynced = 0
    /// Every this many bytes, writeback is started on a background queue so that the final fsync
    /// (which makes the output durable before it is renamed into place) has little left to wait for.
    private static let syncInterval = 256 << 20
    private let syncQueue = DispatchQueue(label: "lora-tool.writer.sync")
    private let syncGroup = DispatchGroup()
    private let syncState = SyncState()

    /// The first background sync error. `@unchecked Sendable`: guarded by `lock`.
    private final class SyncState: @unchecked Sendable {
        private let lock = NSLock()
        private var error: Int32 = 0
        private var running = false
        func start() -> Bool { lock.lock(); defer { lock.unlock() }; if running { return false }; running = true; return true }
        func done(_ e: Int32) { lock.lock(); if error == 0 { error = e }; running = false; lock.unlock() }
        var firstError: Int32 { lock.lock(); defer { lock.unlock() }; return error }
    }

    private func noteWritten(_ n: Int) {
        unsynced += n
        guard unsynced >= SafeTensorsWriter.syncInterval, syncState.start() else { return }
        unsynced = 0
        let descriptor = fd, state = syncState
        syncQueue.async(group: syncGroup) {
            state.done(fdatasync(descriptor) == 0 ? 0 : errno)
        }
    }

    /// The header bytes for `tensors` (offsets are assigned here) and their write order.
    /// - Parameter metadata: written as `__metadata__` with keys sorted by bytes; nil omits it.
    /// - Throws: `SafeTensorsError.invalidWrite` for a tensor named `__metadata__`, a name with a NUL byte, duplicate names, sizes that overflow, or a header over 100,000,000 bytes.
    public static func layout(
        _ tensors: [TensorInfo], metadata: [(key: String, value: String)]?, path: String
    ) throws -> (order: [TensorInfo], header: [UInt8]) {
        var sorted = tensors.sorted {
            $0.dtype.alignmentRank != $1.dtype.alignmentRank
                ? $0.dtype.alignmentRank > $1.dtype.alignmentRank : utf8Precedes($0.name, $1.name)
        }
        var offset: UInt64 = 0
        var seen = Set<[UInt8]>()
        for i in sorted.indices {
            let t = sorted[i]
            if t.name == "__metadata__" {
                throw SafeTensorsError.invalidWrite(path: path, detail: "a tensor may not be named '__metadata__'")
            }
            if t.name.utf8.contains(0) {
                throw SafeTensorsError.invalidWrite(path: path, detail: "tensor name '\(t.name)' holds a NUL character")
            }
            guard seen.insert(Array(t.name.utf8)).inserted else {
                throw SafeTensorsError.invalidWrite(path: path, detail: "tensor '\(t.name)' given twice")
            }
            guard let size = TensorInfo.byteCount(dtype: t.dtype, shape: t.shape) else {
                throw SafeTensorsError.invalidWrite(path: path, detail: "tensor '\(t.name)': shape \(t.shape) × \(t.dtype.rawValue) is not a whole number of bytes or overflows")
            }
            sorted[i].dataOffsets = (offset, offset + UInt64(size))
            offset += UInt64(size)
        }
        var json: [UInt8] = [UInt8(ascii: "{")]
        var first = true
        if let metadata {
            json += Array("\"__metadata__\":{".utf8)
            for (i, kv) in metadata.sorted(by: { utf8Precedes($0.key, $1.key) }).enumerated() {
                if i > 0 { json.append(UInt8(ascii: ",")) }
                JSONWriter.appendCompactString(kv.key, to: &json)
                json.append(UInt8(ascii: ":"))
                JSONWriter.appendCompactString(kv.value, to: &json)
            }
            json.append(UInt8(ascii: "}"))
            first = false
        }
        for t in sorted {
            if !first { json.append(UInt8(ascii: ",")) }
            first = false
            JSONWriter.appendCompactString(t.name, to: &json)
            json += Array(":{\"dtype\":\"\(t.dtype.rawValue)\",\"shape\":[\(t.shape.map(String.init).joined(separator: ","))],\"data_offsets\":[\(t.dataOffsets.begin),\(t.dataOffsets.end)]}".utf8)
        }
        json.append(UInt8(ascii: "}"))
        while json.count % 8 != 0 { json.append(0x20) }
        guard UInt64(json.count) <= Header.maximumLength else {
            throw SafeTensorsError.invalidWrite(path: path, detail: "header of \(json.count) bytes exceeds the 100000000-byte limit")
        }
        var n = UInt64(json.count).littleEndian
        let prefix = withUnsafeBytes(of: &n) { Array($0) }
        return (sorted, prefix + json)
    }

    /// Creates `path` (which must not exist) and writes its header.
    /// - Throws: `SafeTensorsError` from `layout` or from creating the file.
    public init(path: String, tensors: [TensorInfo], metadata: [(key: String, value: String)]? = [("format", "pt")]) throws {
        (order, headerBytes) = try SafeTensorsWriter.layout(tensors, metadata: metadata, path: path)
        self.path = path
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw SafeTensorsError.io(path: path, operation: "create", errno: errno) }
        direct = DirectWriter(fd: fd, path: path)
        if direct == nil { buffer.reserveCapacity(SafeTensorsWriter.bufferLimit) }
        try append(headerBytes.withUnsafeBytes { $0 })
    }

    deinit {
        syncGroup.wait()
        if fd >= 0 { close(fd) }
    }

    /// Total file size once complete.
    public var fileSize: Int { headerBytes.count + Int(order.last?.dataOffsets.end ?? 0) }

    /// The tensor whose bytes are expected next, or nil when all are written.
    public var nextTensor: TensorInfo? { next < order.count ? order[next] : nil }

    /// Appends a piece of the next tensor's data; the tensor is complete once its byte count is reached.
    /// - Throws: `.invalidWrite` when `name` is not next or the pieces overrun it; `.io` on write errors.
    public func writeChunk(_ name: String, bytes: UnsafeRawBufferPointer) throws {
        guard next < order.count, order[next].name == name else {
            throw SafeTensorsError.invalidWrite(path: path, detail: "tensor '\(name)' written out of order")
        }
        guard partial + bytes.count <= order[next].byteCount else {
            throw SafeTensorsError.invalidWrite(path: path, detail: "tensor '\(name)': more bytes than its \(order[next].byteCount)")
        }
        partial += bytes.count
        if partial == order[next].byteCount {
            next += 1
            partial = 0
        }
        try append(bytes)
    }

    /// Appends the data of the next tensor in `order`.
    /// - Throws: `SafeTensorsError.invalidWrite` when `name` is not next or the byte count is wrong;
    ///   `.io` when the disk write fails (ENOSPC, EFBIG, ...).
    public func write(_ name: String, bytes: UnsafeRawBufferPointer) throws {
        guard next < order.count, order[next].name == name, partial == 0 else {
            throw SafeTensorsError.invalidWrite(path: path, detail: "tensor '\(name)' written out of order")
        }
        guard bytes.count == order[next].byteCount else {
            throw SafeTensorsError.invalidWrite(
                path: path, detail: "tensor '\(name)': \(bytes.count) bytes given, \(order[next].byteCount) expected")
        }
        next += 1
        try append(bytes)
    }

    /// Appends the next tensor's data: `count` bytes at byte `offset` of `file`, copied file to file
    /// (`pread` into the direct-I/O buffers, or `sendfile` inside the kernel), never through this
    /// process's mapping of `file` unless the kernel cannot copy.
    /// - Throws: as `write`, and `.io` naming `file` when it cannot be read.
    public func copy(_ name: String, from file: SafeTensorsFile, offset: Int, count: Int) throws {
        let bytes = file.map.bytes(offset: offset, count: count)
        let source = file.map.descriptor
        guard next < order.count, order[next].name == name, count == order[next].byteCount else {
            return try write(name, bytes: bytes)
        }
        if let direct {
            try direct.append(from: source, offset: offset, count: count, sourcePath: file.path)
            next += 1
            return
        }
        try flush()
        var inOffset = offset
        var remaining = count
        while remaining > 0 {
            let n = sendfile(fd, source, &inOffset, min(remaining, 1 << 30))
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EXDEV || errno == ENOSYS || errno == EOPNOTSUPP || errno == EINVAL {
                    let done = count - remaining
                    next += 1
                    return try writeAll(UnsafeRawBufferPointer(rebasing: bytes[done...]))
                }
                throw SafeTensorsError.io(path: path, operation: "copy", errno: errno)
            }
            if n == 0 { break }
            remaining -= n
            noteWritten(n)
        }
        guard remaining == 0 else { throw SafeTensorsError.io(path: path, operation: "copy (source shrank)", errno: EIO) }
        next += 1
    }

    private func append(_ bytes: UnsafeRawBufferPointer) throws {
        if let direct { return try direct.append(bytes) }
        if buffer.count + bytes.count <= SafeTensorsWriter.bufferLimit {
            buffer.append(contentsOf: bytes)
            return
        }
        try flush()
        if bytes.count >= SafeTensorsWriter.bufferLimit {
            try writeAll(bytes)
        } else {
            buffer.append(contentsOf: bytes)
        }
    }

    private func flush() throws {
        guard !buffer.isEmpty else { return }
        try buffer.withUnsafeBytes { try writeAll($0) }
        buffer.removeAll(keepingCapacity: true)
    }

    private func writeAll(_ bytes: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < bytes.count {
            let n = Glibc.write(fd, bytes.baseAddress! + done, bytes.count - done)
            if n < 0 {
                if errno == EINTR { continue }
                throw SafeTensorsError.io(path: path, operation: "write", errno: errno)
            }
            done += n
        }
        noteWritten(bytes.count)
    }

    /// Flushes, fsyncs and closes the file.
    /// - Throws: `.invalidWrite` when tensors are missing; `.io` when the flush or fsync fails.
    public func finish() throws {
        guard next == order.count else {
            throw SafeTensorsError.invalidWrite(path: path, detail: "\(order.count - next) tensors were never written, first '\(order[next].name)'")
        }
        try flush()
        try direct?.finish()
        syncGroup.wait()
        if syncState.firstError != 0 { throw SafeTensorsError.io(path: path, operation: "fdatasync", errno: syncState.firstError) }
        guard fsync(fd) == 0 else { throw SafeTensorsError.io(path: path, operation: "fsync", errno: errno) }
        let rc = close(fd)
        fd = -1
        guard rc == 0 else { throw SafeTensorsError.io(path: path, operation: "close", errno: errno) }
    }
}
