import Foundation
import SafeTensors

/// How a model directory is written.
public struct ModelWriteOptions: Sendable {
    /// Bytes of tensor data per shard (decimal, transformers' convention).
    public var maxShardSize = 5_000_000_000
    /// Write straight to the disk (direct I/O) and fsync before the output gets its name; false
    /// writes through the page cache with no fsync (as `cp`), leaving durability to the kernel.
    public var durable = true
    /// Bytes per output chunk (tests make it small to cross chunk boundaries with small tensors).
    public var chunkSize = ChunkedOutput.defaultChunkSize
    /// Write only the shards this part owns (`PartSelection.assign` over their data bytes), and the
    /// index and side files only in part 0; nil writes everything.
    public var part: PartSelection?
    /// Stem of the shard file names: `model` (transformers), `diffusion_pytorch_model` (diffusers
    /// models, which `from_pretrained` looks for under that name).
    public var filePrefix = "model"
    /// Folder inside the output the files go to (a pipeline component, `unet`); nil: the output itself.
    public var subdirectory: String?
    /// Write every tensor into the output itself, an `AtomicOutput` that is one file (a single-file
    /// checkpoint's merge): no shards, index or side files.
    public var singleFile = false
    /// Each file's `__metadata__` (nil: none): transformers' `{"format": "pt"}`, or a single-file
    /// base's own.
    public var metadata: [(key: String, value: String)]? = [("format", "pt")]
    /// Compute each written file's SHA-256 (`WrittenFiles.sha256`): the shards while their chunks
    /// are written (a serial chain per file at the SHA extensions' ~1.8 GB/s, as much CPU on two
    /// cores as the rest of a merge), the index and side files read back.
    public var checksums = false

    public init() {}

    /// The largest shard each library saves by default: transformers 5 GB (`save_pretrained`'s
    /// `max_shard_size="5GB"`), diffusers 10 GB (`ModelMixin.save_pretrained`'s `"10GB"`), so a
    /// merge keeps the base's one file where the library that wrote it would.
    public static func defaultMaxShardSize(filePrefix: String) -> Int {
        filePrefix == DiffusersComponent.diffusersWeightsName ? 10_000_000_000 : 5_000_000_000
    }
}

/// What a sink wrote into the staging directory.
public struct WrittenFiles: Sendable {
    /// File names: shards, the index when there is more than one shard, then side files.
    public var files: [String]
    /// SHA-256 (lowercase hex) of each file when `ModelWriteOptions.checksums`, else empty.
    public var sha256: [String: String]
    /// Bytes of tensor data written.
    public var tensorBytes: Int
    /// Every shard of the plan, in order (more than `files` holds when writing one part).
    public var shards: [String]
}

/// The one writer of model directories: a stream's tensors as safetensors shards (greedy over the
/// names in byte order, at most `maxShardSize` bytes of data each, transformers' file names), the
/// index when there is more than one, and the side files the stream carries, into the staging
/// directory of an `AtomicOutput` (the command commits it, after a verification if asked).
///
/// Each file is written as fixed-size chunks by `context.threads` workers: a worker claims the next
/// chunk, fills it from the sources it spans (`TensorSource.fill`, straight into the chunk buffer) and
/// queues its write. Nothing waits for another thread's chunk, no byte is copied twice, and memory
/// is one chunk buffer per worker plus what the sources in progress hold.
///
/// ```swift
/// let output = try AtomicOutput(destination: "out", isDirectory: true, force: false)
/// let written = try ModelDirectorySink(output: output, options: ModelWriteOptions(), context: try RunContext())
///     .consume(TensorStream(model: try Checkpoint(path: "model")))
/// try output.commit()
/// ```
public struct ModelDirectorySink: Sendable {
    public let output: AtomicOutput
    public let options: ModelWriteOptions
    let context: RunContext

    public init(output: AtomicOutput, options: ModelWriteOptions, context: RunContext) {
        self.output = output
        self.options = options
        self.context = context
    }

    /// Writes every tensor of `stream`, then its side files.
    /// - Throws: the first error any source met (the other workers stop at their next chunk);
    ///   `SafeTensorsError` writing.
    public func consume(_ stream: TensorStream) throws -> WrittenFiles {
        let infos = stream.tensors.map { $0.source.info(named: $0.name) }
        let plan = ShardPlan(tensors: infos, maxShardSize: options.singleFile ? .max : options.maxShardSize, prefix: options.filePrefix)
        // Names relative to the output: `unet/diffusion_pytorch_model.safetensors` inside a pipeline.
        let folder = options.subdirectory.map { $0 + "/" } ?? ""
        if let sub = options.subdirectory, mkdir(output.path(for: sub), 0o755) != 0 {
            throw SafeTensorsError.outputIO(path: output.path(for: sub), operation: "create", errno: errno)
        }
        var shards = plan.shards
        if let part = options.part {
            let owner = PartSelection.assign(sizes: shards.map { $0.tensors.reduce(0) { $0 + $1.byteCount } }, parts: part.count)
            shards = shards.indices.filter { owner[$0] == part.index }.map { shards[$0] }
        }
        let written = shards.flatMap(\.tensors)
        let progress = ProgressTally(tensors: written.count, bytes: written.reduce(0) { $0 + $1.byteCount }, report: context.progress)
        let followers = Dictionary(stream.tensors.compactMap { t in t.source.placedAfter.map { (t.name, $0) } }, uniquingKeysWith: { a, _ in a })
        let deferred = Set(stream.tensors.filter { $0.source.deferred }.map(\.name))
        var files: [String] = []
        var hashes: [String: String] = [:]
        for shard in shards {
            let name = options.singleFile ? (output.staging as NSString).lastPathComponent : folder + shard.fileName
            let path = options.singleFile ? output.staging : output.path(for: name)
            // Chunks are hashed in file order as they are written; a file whose deferred chunks come
            // last is hashed once written instead.
            let reordered = shard.tensors.contains { deferred.contains($0.name) }
            let file = try ChunkedOutput(path: path, tensors: shard.tensors, metadata: options.metadata,
                                         chunkSize: options.chunkSize, buffers: context.threads + 2, durable: options.durable, followers: followers,
                                         hashing: options.checksums && !reordered)
            hashes[name] = try write(file, sources: file.order.map { stream.source($0.name)! }, progress: progress)
            if options.checksums && reordered { hashes[name] = try SHA256.file(atPath: path) }
            files.append(name)
        }
        if options.singleFile { return WrittenFiles(files: files, sha256: hashes, tensorBytes: progress.bytesTotal, shards: files) }
        let writesShared = (options.part?.index ?? 0) == 0
        if writesShared, let index = plan.index {
            let name = folder + options.filePrefix + ".safetensors.index.json"
            try SideFiles.write(output.path(for: name), bytes: index.serialized())
            files.append(name)
        }
        if writesShared, let side = stream.sideFiles {
            files += try SideFiles.copy(from: side.directory, to: output, dtype: side.dtype, dropQuantization: side.dropQuantization,
                                        denseModules: side.denseModules, layerSources: side.layerSources, subdirectory: options.subdirectory).map { folder + $0 }
        }
        if options.checksums {
            for f in files where hashes[f] == nil { hashes[f] = try SHA256.file(atPath: output.path(for: f)) }
        }
        return WrittenFiles(files: files, sha256: hashes, tensorBytes: progress.bytesTotal, shards: plan.shards.map { folder + $0.fileName })
    }

    /// Fills and writes every chunk of `file` on the context's workers, then finishes the file.
    /// - Returns: the file's SHA-256 (hashed in file order while writing), nil when not hashed.
    private func write(_ file: ChunkedOutput, sources: [any TensorSource], progress: ProgressTally) throws -> String? {
        let remaining = RemainingBytes(file.order.map(\.byteCount))
        let order = ModelDirectorySink.chunkOrder(file, sources: sources)
        let counter = ClaimCounter(count: file.chunkCount)
        let failure = FirstError()
        DispatchQueue.concurrentPerform(iterations: max(1, min(context.threads, file.chunkCount))) { _ in
            while !failure.happened, let claim = counter.next() {
                let k = order[claim]
                do {
                    let segments = file.segments(ofChunk: k)
                    try file.write(chunk: k) { buffer in
                        for s in segments {
                            let destination = buffer.baseAddress! + s.offsetInChunk
                            guard let i = s.tensor else {
                                file.headerBytes.withUnsafeBytes { destination.copyMemory(from: $0.baseAddress! + s.bytes.lowerBound, byteCount: s.bytes.count) }
                                continue
                            }
                            try ModelDirectorySink.fillAligned(sources[i], s.bytes, into: destination)
                        }
                    }
                    for s in segments {
                        if let i = s.tensor, remaining.subtract(s.bytes.count, from: i) {
                            sources[i].finished()
                            progress.add(bytes: file.order[i].byteCount)
                        }
                    }
                } catch {
                    failure.record(error)
                }
            }
        }
        if let error = failure.error { throw error }
        try file.finish()
        return file.sha256
    }

    /// The order chunks are claimed in: file order, except that chunks holding a deferred source
    /// (`TensorSource.deferred`) come after all others, in file order.
    static func chunkOrder(_ file: ChunkedOutput, sources: [any TensorSource]) -> [Int] {
        guard sources.contains(where: \.deferred) else { return Array(0..<file.chunkCount) }
        let late = (0..<file.chunkCount).map { k in file.segments(ofChunk: k).contains { $0.tensor.map { sources[$0].deferred } ?? false } }
        return (0..<file.chunkCount).filter { !late[$0] } + (0..<file.chunkCount).filter { late[$0] }
    }

    /// Fills `range` of `source`, which may start or end inside an element (a chunk boundary after
    /// a tensor of odd length): the elements covering it are filled aside and the range copied out,
    /// so that sources only ever see element-aligned ranges.
    static func fillAligned(_ source: any TensorSource, _ range: Range<Int>, into destination: UnsafeMutableRawPointer) throws {
        let size = max(1, source.dtype.bitSize / 8)
        if range.lowerBound % size == 0 && range.upperBound % size == 0 {
            try source.fill(range, into: destination)
            return
        }
        let lower = range.lowerBound / size * size, upper = (range.upperBound + size - 1) / size * size
        var aside = [UInt8](repeating: 0, count: upper - lower)
        try aside.withUnsafeMutableBytes { try source.fill(lower..<upper, into: $0.baseAddress!) }
        aside.withUnsafeBytes { destination.copyMemory(from: $0.baseAddress! + (range.lowerBound - lower), byteCount: range.count) }
    }

    /// Bytes of each tensor not yet written. `@unchecked Sendable`: guarded by `lock`.
    private final class RemainingBytes: @unchecked Sendable {
        private let lock = NSLock()
        private var bytes: [Int]
        init(_ bytes: [Int]) { self.bytes = bytes }
        /// True when this made tensor `i` complete.
        func subtract(_ n: Int, from i: Int) -> Bool {
            lock.lock()
            defer { lock.unlock() }
            bytes[i] -= n
            return bytes[i] == 0
        }
    }

    /// The first error of any worker. `@unchecked Sendable`: guarded by `lock`.
    private final class FirstError: @unchecked Sendable {
        private let lock = NSLock()
        private var first: Error?
        var happened: Bool { lock.lock(); defer { lock.unlock() }; return first != nil }
        var error: Error? { lock.lock(); defer { lock.unlock() }; return first }
        func record(_ e: Error) { lock.lock(); if first == nil { first = e }; lock.unlock() }
    }
}
