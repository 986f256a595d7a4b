import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Streams one safetensors file to disk, tensor by tensor, in the byte layout of Python's
/// `safetensors.save_file` (or with some tensors placed after others: `layout`'s `followers`).
///
/// The header is computed up front from names, dtypes and shapes: tensors ordered by descending
/// dtype alignment then name bytes, offsets consecutive from 0, compact JSON padded with spaces to a
/// multiple of 8. Data must then be appended in `order`. The bytes go to disk through a
/// `ChunkedOutput` (space reserved up front, direct I/O where the file system allows it, fsync in
/// `finish`): this writer fills its chunks in order, one at a time, and hands each one over when full.
public final class SafeTensorsWriter {
    /// Tensors in write order, with their data offsets.
    public let order: [TensorInfo]
    /// The 8-byte length plus padded JSON.
    public let headerBytes: [UInt8]
    public let path: String
    private let output: ChunkedOutput
    private var next = 0
    /// Bytes of `order[next]` already written by `writeChunk`.
    private var partial = 0
    /// The chunk being filled, and how much of it is.
    private var chunk = 0
    private var current: UnsafeMutableRawPointer?
    private var filled = 0

    /// The header bytes for `tensors` (offsets are assigned here) and their write order.
    /// - Parameters:
    ///   - metadata: written as `__metadata__` with keys sorted by bytes; nil omits it.
    ///   - followers: tensor name → the tensor it is to follow directly (`placingFollowers`), for
    ///     writers that can only produce a tensor after another; empty: Python's order exactly.
    /// - Throws: `SafeTensorsError.invalidWrite` for a tensor named `__metadata__`, a name with a NUL byte, duplicate names, sizes that overflow, or a header over 100,000,000 bytes.
    public static func layout(
        _ tensors: [TensorInfo], metadata: [(key: String, value: String)]?, path: String, followers: [String: String] = [:]
    ) throws -> (order: [TensorInfo], header: [UInt8]) {
        var sorted = placingFollowers(tensors.sorted {
            $0.dtype.alignmentRank != $1.dtype.alignmentRank
                ? $0.dtype.alignmentRank > $1.dtype.alignmentRank : utf8Precedes($0.name, $1.name)
        }, followers)
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

    /// `sorted` (Python's order) with each follower whose leader is in it (and is not itself moved)
    /// moved to right after its leader, followers of one leader in their sorted order — when every
    /// tensor then starts at a multiple of its element size (offsets from the 8-aligned data start),
    /// as Python's order guarantees; otherwise `sorted` unchanged, so a file is never misaligned.
    static func placingFollowers(_ sorted: [TensorInfo], _ followers: [String: String]) -> [TensorInfo] {
        guard !followers.isEmpty else { return sorted }
        let names = Set(sorted.map(\.name))
        let moved = sorted.filter { t in followers[t.name].map { names.contains($0) && followers[$0] == nil } ?? false }
        guard !moved.isEmpty else { return sorted }
        let byLeader = Dictionary(grouping: moved) { followers[$0.name]! }
        let movedNames = Set(moved.map(\.name))
        var order: [TensorInfo] = []
        for t in sorted where !movedNames.contains(t.name) {
            order.append(t)
            order += byLeader[t.name] ?? []
        }
        var offset = 0
        for t in order {
            guard offset % max(1, t.dtype.bitSize / 8) == 0 else { return sorted }
            offset += TensorInfo.byteCount(dtype: t.dtype, shape: t.shape) ?? 0
        }
        return order
    }

    /// Creates `path` (which must not exist), reserves its space and writes its header.
    /// - Throws: `SafeTensorsError` from `layout` or from creating the file.
    public init(path: String, tensors: [TensorInfo], metadata: [(key: String, value: String)]? = [("format", "pt")]) throws {
        output = try ChunkedOutput(path: path, tensors: tensors, metadata: metadata)
        (order, headerBytes) = (output.order, output.headerBytes)
        self.path = path
        try append(headerBytes.withUnsafeBytes { $0 })
    }

    deinit {
        if let current { output.giveBuffer(current) }
    }

    /// Total file size once complete.
    public var fileSize: Int { output.fileSize }

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

    /// Appends the next tensor's data: `count` bytes at byte `offset` of `file`, read with pread
    /// straight into the chunk being filled (never through this process's mapping of `file`).
    /// - Throws: as `write`, and `.io` naming `file` when it cannot be read.
    public func copy(_ name: String, from file: SafeTensorsFile, offset: Int, count: Int) throws {
        guard next < order.count, order[next].name == name, partial == 0, count == order[next].byteCount else {
            return try write(name, bytes: file.map.bytes(offset: offset, count: count))
        }
        next += 1
        try fill(count) { destination, done, n in try file.read(at: offset + done, count: n, into: destination) }
    }

    private func append(_ bytes: UnsafeRawBufferPointer) throws {
        try fill(bytes.count) { destination, done, n in destination.copyMemory(from: bytes.baseAddress! + done, byteCount: n) }
    }

    /// Puts `count` more bytes into the chunks in order, `body(destination, done, n)` providing bytes
    /// `[done, done+n)` of them; each chunk is handed to the output as soon as it is full.
    private func fill(_ count: Int, _ body: (UnsafeMutableRawPointer, Int, Int) throws -> Void) throws {
        var done = 0
        while done < count {
            let length = min(output.chunkSize, output.fileSize - chunk * output.chunkSize)
            if current == nil { current = try output.takeBuffer() }
            let n = min(count - done, length - filled)
            try body(current! + filled, done, n)
            filled += n
            done += n
            if filled == length {
                output.submit(chunk: chunk, buffer: current!, length: length)
                current = nil
                filled = 0
                chunk += 1
            }
        }
    }

    /// Waits for every write, fsyncs and closes the file.
    /// - Throws: `.invalidWrite` when tensors are missing; `.io` when a write, the fsync or the close fails.
    public func finish() throws {
        guard next == order.count else {
            throw SafeTensorsError.invalidWrite(path: path, detail: "\(order.count - next) tensors were never written, first '\(order[next].name)'")
        }
        try output.finish()
    }
}
