import Foundation
import SafeTensors

/// An ordered list of named tensors, each a `TensorSource`, with the side files that travel with
/// them: what passes transform and sinks consume.
///
/// Building a stream reads headers only; passes return new streams by wrapping sources, and no
/// byte is computed until a sink (or a checker) asks for it. Names are unique and kept sorted by
/// UTF-8 bytes, the order of every file lora-tool writes.
///
/// ```swift
/// let context = try RunContext()
/// var stream = try Dequantize4bitPass().apply(to: TensorStream(model: Checkpoint(path: "llama-nf4")))
/// stream = CastPass(.bf16, context: context).apply(to: stream)
/// let output = try AtomicOutput(destination: "llama-dense", isDirectory: true, force: false)
/// _ = try ModelDirectorySink(output: output, options: ModelWriteOptions(), context: context).consume(stream)
/// try output.commit()
/// ```
public final class TensorStream: TensorStore, @unchecked Sendable {
    public let path: String
    public let names: [String]
    private let sources: [String: any TensorSource]
    /// Side files to copy with the tensors; nil for a single-file model.
    public let sideFiles: SideFilePlan?
    /// `__metadata__` of the model's first file.
    public let metadata: [(key: String, value: String)]?
    /// Whole computed tensors handed out by `bytes(of:)`, kept until `release`.
    private let lock = NSLock()
    private var computed: [String: UnsafeMutableRawBufferPointer] = [:]

    /// A stream of `tensors` (any order; names must be unique).
    public init(_ tensors: [(name: String, source: any TensorSource)], path: String, sideFiles: SideFilePlan?,
                metadata: [(key: String, value: String)]? = nil) {
        var byName: [String: any TensorSource] = [:]
        for t in tensors { byName[t.name] = t.source }
        precondition(byName.count == tensors.count, "tensor names in a stream are unique")
        sources = byName
        names = byName.keys.sorted(by: utf8Precedes)
        self.path = path
        self.sideFiles = sideFiles
        self.metadata = metadata
    }

    /// Every tensor of `model` as stored; side files from its directory when it is one (or an index).
    public convenience init(model: Checkpoint) {
        let isDirectory = model.path == model.directory || model.indexPath != nil
        self.init(model.names.map { ($0, StoredTensor(model, $0)!) }, path: model.path,
                  sideFiles: isDirectory ? SideFilePlan(directory: model.directory) : nil, metadata: model.metadata)
    }

    deinit { computed.values.forEach { $0.deallocate() } }

    /// Below this many bytes, `bytes(of:)` reads a stored tensor instead of mapping it.
    static let smallTensor = 1 << 20

    /// `name` when `bytes(of:)` hands out its file mapping: a stored tensor of at least `smallTensor` bytes.
    private func mapped(_ name: String) -> StoredTensor? {
        guard let stored = sources[name] as? StoredTensor, stored.byteCount >= TensorStream.smallTensor else { return nil }
        return stored
    }

    public func source(_ name: String) -> (any TensorSource)? { sources[name] }

    public func info(_ name: String) -> TensorInfo? { sources[name].map { $0.info(named: name) } }

    /// The tensors in order, with their sources.
    public var tensors: [(name: String, source: any TensorSource)] { names.map { ($0, sources[$0]!) } }

    /// The same stream with other tensors or side files.
    public func with(_ tensors: [(name: String, source: any TensorSource)], sideFiles: SideFilePlan?) -> TensorStream {
        TensorStream(tensors, path: path, sideFiles: sideFiles, metadata: metadata)
    }

    public func bytes(of name: String) throws -> UnsafeRawBufferPointer {
        guard let source = sources[name] else { throw SafeTensorsError.tensorNotFound(tensor: name, in: path) }
        // Large stored tensors through their mapping (the checkers drop the pages as they go); small
        // ones (quant maps, scales, quant states) read into memory: mapping them would make the
        // page cache's large folios around them resident, megabytes for each few bytes.
        if let stored = mapped(name) { return try stored.checkpoint.bytes(of: stored.name) }
        lock.lock()
        defer { lock.unlock() }
        if let b = computed[name] { return UnsafeRawBufferPointer(b) }
        try MemoryBudget.check(elements: source.byteCount, bytesPerElement: 1, what: "tensor '\(name)' (computed whole)")
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, source.byteCount), alignment: 64)
        do { if source.byteCount > 0 { try source.fill(0..<source.byteCount, into: buffer.baseAddress!) } } catch {
            buffer.deallocate()
            throw error
        }
        computed[name] = buffer
        return UnsafeRawBufferPointer(rebasing: buffer[0..<source.byteCount])
    }

    public func read(_ name: String, bytes range: Range<Int>, into destination: UnsafeMutableRawPointer) throws {
        guard let source = sources[name] else { throw SafeTensorsError.tensorNotFound(tensor: name, in: path) }
        try source.fill(range, into: destination)
    }

    public func dropPages(_ bytes: UnsafeRawBufferPointer, of name: String) {
        if mapped(name) != nil { MappedFile.releasePages(bytes) }
    }

    public func release(_ name: String) {
        guard sources[name] != nil else { return }
        if let stored = mapped(name) { stored.checkpoint.release(stored.name); return }
        lock.lock()
        let b = computed.removeValue(forKey: name)
        lock.unlock()
        b?.deallocate()
    }
}
