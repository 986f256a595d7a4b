import Foundation
import GGUF
import LoRAKernels
import SafeTensors

/// Writes a stream over a `GGUFModel` (after passes such as the merge) as one GGUF v3 file or as
/// a split model's shards; or a stream over a transformers model as the file(s)
/// `convert_hf_to_gguf.py` writes (`GGUFExportPlan`: its metadata and tensor table, alignment 32,
/// every tensor computed as below).
///
/// Layout: the base's metadata, every key and value in the base's order (`general.alignment`
/// included, and honoured; a split base's `split.*` keys left out), then the tensor infos in the
/// base's order with the base's GGUF names and dimensions, the data section at the alignment,
/// each tensor padded to it (gguf-py's and llama.cpp's layout: a base written by either and merged
/// with `keep` keeps its offsets). Split (`GGUFSplitLayout`, with more than one shard): the
/// tensors in the same order, cut into shards as `GGUFSplit` describes, the metadata in the first
/// shard followed by the split keys, the other shards holding the split keys only, so each shard
/// is the file gguf-py's `GGUFWriter` writes with the same boundaries.
///
/// Tensors: a tensor whose source is still the base's own `GGUFTensor` is copied byte for byte
/// from the base (any ggml type, quantized or not). Every other one (merged, replaced) is written
/// in `GGUFOutputType.type(forBase:)`: F32/F16/BF16 as the merge rounded once from f32 (a
/// `MergedTensor` produces that dtype itself), block types by `GGMLQuantizer` (ggml's reference
/// quantizers, bit for bit) from the exact f32 merge, rows put back in llama.cpp's order
/// (`GGUFRowPermutation`). A tensor is computed in groups of whole GGUF rows (whole heads when
/// permuted) of about 64 Ki values, `threads` groups at a time, each group's bytes a pure function
/// of its rows: the same file on every thread count. For block types the sink records how much of
/// the change each tensor kept (`Requantize.Survival`: blocks changed, correlation and norm ratio
/// of the stored delta with the intended one: `DeltaComparison` sums per group, added in group order).
///
/// Memory: a window of groups (threads × 2 groups), the groups queued for writing (`GGUFFileWriter`
/// writes (and, when asked, hashes) them in file order on a background thread while the next window is computed,
/// at most `GGUFFileWriter.depth` queued), and what the sources hold for the tensor in progress;
/// fsynced when `durable`.
public final class GGUFSink: Sendable {
    /// What was written.
    public struct Report: Sendable {
        /// Each file's SHA-256 (lowercase hex), in shard order (one for an unsplit output); empty
        /// when not `hashing`.
        public var sha256: [String]
        /// All files' bytes.
        public var bytes: Int
        /// Tensors per ggml type name in the output.
        public var types: [String: Int]
        /// Each tensor written in a block type other than as stored, by GGUF name.
        public var survival: [Requantize.Survival]
        /// GGUF names of the tensors computed (not copied), in file order.
        public var computed: [String]
    }

    struct Entry: Sendable {
        /// The GGUF tensor written: its name and dimensions (innermost first).
        var ggufName: String
        var dims: [UInt64]
        /// Its name in the stream, and its source there.
        var name: String
        var source: any TensorSource
        /// The base model's tensor (merging into a GGUF model); nil when a transformers model is exported.
        var base: GGUFTensor?
        /// llama.cpp's rope order of its rows, when it has one (the source's rows are transformers').
        var permutation: GGUFRowPermutation?
        var type: GGMLType
        var changed: Bool

        /// The base tensor's info: only for the entries of a merge into a GGUF base (verify reads it).
        var info: GGUFTensorInfo { base!.info }
        var rowLength: Int { Int(dims.first ?? 1) }
        var rowCount: Int { dims.dropFirst().reduce(1) { $0 * Int($1) } }
    }

    /// One output file: a run of the entries, its header and their data offsets.
    struct Shard: Sendable {
        var entries: Range<Int>
        var header: [UInt8]
        var offsets: [UInt64]
        var fileSize: Int
    }

    let entries: [Entry]
    /// The output files, in order: one, or a split model's shards.
    let shards: [Shard]
    let alignment: Int
    let context: RunContext

    /// The number of files `write` writes.
    public var fileCount: Int { shards.count }

    /// Values per group of rows.
    static let groupValues = 1 << 16

    /// Plans the file (or the shards `split` cuts it into): output types and layout, from headers only.
    /// - Throws: `GGUFError.unsupportedType` for a computed tensor whose base type cannot be decoded
    ///   or whose output type cannot be written; `GGUFError.incompatibleTensor` when its row length
    ///   is not a whole number of the output type's blocks; `LoRACoreError.invalidRequest` when the
    ///   stream's tensors are not the model's, or when `split` cuts the output into more than one
    ///   shard and the base's `general.alignment` is not 32.
    public convenience init(model: GGUFModel, stream: TensorStream, type: GGUFOutputType, split: GGUFSplitLayout = .none,
                            context: RunContext) throws {
        var entries: [Entry] = []
        for (info, name) in model.tensors {
            guard let source = stream.source(name), let base = model.stream.source(name) as? GGUFTensor else {
                throw LoRACoreError.invalidRequest("\(model.file.path): tensor '\(info.name)' ('\(name)') is missing from the merged stream")
            }
            let unchanged = (source as? GGUFTensor).map { $0.info == info && $0.file === base.file } ?? false
            let out = unchanged ? info.type : type.type(forBase: info.type)
            if !unchanged {
                guard GGMLDequantizer.supportedTypes.contains(info.type) else {
                    throw GGUFError.unsupportedType(type: info.type, operation: "dequantizing", tensor: info.name)
                }
                try GGUFSink.checkWritable(out, rowLength: info.rowLength, file: model.file.path, tensor: info.name)
            }
            entries.append(Entry(ggufName: info.name, dims: info.dims, name: name, source: source, base: base,
                                 permutation: base.permutation, type: out, changed: !unchanged))
        }
        guard stream.names.count == entries.count else {
            let extra = Set(stream.names).subtracting(entries.map(\.name)).sorted(by: utf8Precedes)
            throw LoRACoreError.invalidRequest("\(model.file.path): the merged stream has tensors the GGUF base does not: \(extra.prefix(5).joined(separator: ", "))")
        }
        try self.init(entries: entries, metadata: model.modelMetadata, alignment: model.file.header.alignment, split: split,
                      file: model.file.path, context: context)
    }

    /// Plans the export of a transformers model (after passes such as the merge) as
    /// `convert_hf_to_gguf.py` writes it (`GGUFExportPlan`), in the shards `split` cuts it into:
    /// every tensor computed from the stream.
    /// - Throws: `LoRACoreError.invalidRequest` when the stream's tensors are not the plan's;
    ///   `GGUFError.incompatibleTensor` for rows that are not whole blocks of the tensor's type.
    convenience init(export plan: GGUFExportPlan, stream: TensorStream, split: GGUFSplitLayout = .none, context: RunContext) throws {
        var entries: [Entry] = []
        for t in plan.tensors {
            guard let stored = t.values.map({ ConstantTensor(floats: $0) }) ?? stream.source(t.source) else {
                throw LoRACoreError.invalidRequest("\(stream.path): tensor '\(t.source)' is missing from the merged stream")
            }
            let source: any TensorSource = t.shiftedNorm ? NormShiftedTensor(source: stored) : stored
            try GGUFSink.checkWritable(t.type, rowLength: Int(t.dims.first ?? 1), file: stream.path, tensor: t.source)
            entries.append(Entry(ggufName: t.name, dims: t.dims, name: t.source, source: source, base: nil,
                                 permutation: t.permutation, type: t.type, changed: true))
        }
        try self.init(entries: entries, metadata: plan.metadata, alignment: GGUFFile.defaultAlignment, split: split,
                      file: stream.path, context: context)
    }

    /// - Throws: `LoRACoreError.invalidRequest` naming `file` when `split` gives more than one shard
    ///   and `alignment` is not the default (the other shards have no `general.alignment`).
    private init(entries: [Entry], metadata: [(key: String, value: GGUFValue)], alignment: Int, split: GGUFSplitLayout,
                 file: String, context: RunContext) throws {
        self.entries = entries
        self.alignment = alignment
        self.context = context
        let counts = try split.tensorCounts(entries.map { GGUFHeaderEncoder.byteCount(dims: $0.dims, type: $0.type) }, file: file)
        if counts.count > 1 && alignment != GGUFFile.defaultAlignment {
            throw LoRACoreError.invalidRequest(
                "\(file): general.alignment is \(alignment), and a split output cannot keep it (gguf-py writes the shards after the first without it, so they are read at \(GGUFFile.defaultAlignment)): write it unsplit")
        }
        var shards: [Shard] = [], start = 0
        for (k, n) in counts.enumerated() {
            let keys = counts.count == 1 ? [] : GGUFSplit.keys(number: k, count: counts.count, tensors: entries.count)
            let range = start..<(start + n)
            let (header, offsets, size) = GGUFHeaderEncoder.layout(
                metadata: (k == 0 ? metadata : []) + keys, tensors: entries[range].map { ($0.ggufName, $0.dims, $0.type) }, alignment: alignment)
            shards.append(Shard(entries: range, header: header, offsets: offsets, fileSize: size))
            start += n
        }
        self.shards = shards
    }

    /// - Throws: `GGUFError.unsupportedType` when `type` cannot be written, `.incompatibleTensor`
    ///   when rows of `rowLength` values are not whole blocks of it.
    private static func checkWritable(_ type: GGMLType, rowLength: Int, file: String, tensor: String) throws {
        guard GGMLQuantizer.supportedTypes.contains(type) else {
            throw GGUFError.unsupportedType(type: type, operation: "quantizing", tensor: tensor)
        }
        guard rowLength % type.blockSize == 0 else {
            throw GGUFError.incompatibleTensor(
                file: file, tensor: tensor,
                detail: "rows of \(rowLength) values are not whole \(type.name) blocks of \(type.blockSize): write it as another --gguf-type")
        }
    }

    /// Writes the file at `path` (which must not exist), when the output is one file.
    /// - Parameters:
    ///   - durable: fsync the file before returning.
    ///   - hashing: compute each file's SHA-256 as it is written.
    /// - Throws: `SafeTensorsError.outputIO` for write failures; what computing a tensor throws
    ///   (`LoRACoreError.nonFinite`, `.overflow`, `GGUFError.nonFiniteValue`).
    public func write(to path: String, durable: Bool, hashing: Bool = false) throws -> Report {
        try write(to: [path], durable: durable, hashing: hashing)
    }

    /// Writes each file at its path in `paths` (one per shard, `fileCount`, none existing), in order.
    /// - Parameters:
    ///   - durable: fsync each file before the next is started.
    ///   - hashing: compute each file's SHA-256 as it is written.
    /// - Throws: as `write(to:durable:hashing:)`; the files written so far are left for the caller to remove.
    public func write(to paths: [String], durable: Bool, hashing: Bool = false) throws -> Report {
        precondition(paths.count == shards.count, "one path per shard")
        var types: [String: Int] = [:]
        var survival: [Requantize.Survival] = []
        var computed: [String] = []
        var hashes: [String] = []
        let total = entries.reduce(0) { $0 + GGUFHeaderEncoder.byteCount(dims: $1.dims, type: $1.type) }
        var done = 0
        for (shard, path) in zip(shards, paths) {
            let out = try GGUFFileWriter(path: path, size: shard.fileSize, durable: durable, hashing: hashing)
            try out.append(shard.header)
            let dataStart = shard.header.count
            for (i, e) in zip(shard.entries, entries[shard.entries]) {
                try out.pad(to: dataStart + Int(shard.offsets[i - shard.entries.lowerBound]))
                if e.changed {
                    if let s = try writeComputed(e, to: out) { survival.append(s) }
                    computed.append(e.ggufName)
                } else if let base = e.base {
                    try out.append(mapped: base.file.bytes(of: base.info), releasingPages: true)
                }
                types[e.type.name, default: 0] += 1
                done += GGUFHeaderEncoder.byteCount(dims: e.dims, type: e.type)
                context.progress?(Progress(tensorsDone: i + 1, tensorsTotal: entries.count, bytesDone: done, bytesTotal: total))
                try out.pad(to: GGUFHeaderEncoder.padded(out.position, alignment))
            }
            precondition(out.position == shard.fileSize, "the layout and the writes agree")
            if let hash = try out.finish(durable: durable) { hashes.append(hash) }
        }
        return Report(sha256: hashes, bytes: shards.reduce(0) { $0 + $1.fileSize }, types: types, survival: survival, computed: computed)
    }

    // MARK: - Computed tensors

    /// Writes a merged (or replaced) tensor in `e.type`; its survival when that is a block type.
    private func writeComputed(_ e: Entry, to out: GGUFFileWriter) throws -> Requantize.Survival? {
        let t = e.type
        let plain = t == .f32 || t == .f16 || t == .bf16
        let dtype: DType = t == .f16 ? .float16 : t == .bf16 ? .bfloat16 : .float32
        // One rounding from the exact f32 merge: a merged tensor produces the output dtype itself
        // (or f32 for the quantizer), never a rounding of its rounding.
        let source: any TensorSource = (e.source as? MergedTensor)?.producing(dtype) ?? e.source
        let rowLength = e.rowLength, rows = e.rowCount
        let outRowBytes = rowLength / t.blockSize * t.typeSize
        var groupRows = max(1, GGUFSink.groupValues / rowLength)
        if let p = e.permutation, e.dims.count >= 2 { groupRows = (groupRows + p.headRows - 1) / p.headRows * p.headRows }
        if e.dims.count < 2 { groupRows = rows }  // 1-D: one row, permuted (if at all) element by element
        let groups = (rows + groupRows - 1) / groupRows
        let window = max(1, context.threads * 2)
        var survival = DeltaComparison()
        var g = 0
        while g < groups {
            let n = min(window, groups - g)
            let results = ParallelSlots<(bytes: [UInt8], survival: DeltaComparison)>(count: n)
            let counter = ClaimCounter(count: n)
            let (first, step) = (g, groupRows)
            DispatchQueue.concurrentPerform(iterations: min(n, context.threads)) { _ in
                while let k = counter.next() {
                    let r0 = (first + k) * step, r1 = min(rows, r0 + step)
                    results.set(k, Result { try self.group(e, source: source, rows: r0..<r1, plain: plain, dtype: dtype, outRowBytes: outRowBytes) })
                }
            }
            // In group order: the first failing group's error, the bytes and sums in file order.
            for k in 0..<n {
                let r = try results.get(k).get()
                try out.append(r.bytes)
                survival.add(r.survival)
            }
            g += n
        }
        source.finished()
        e.source.finished()
        e.base?.finished()
        guard !plain, let base = e.base else { return nil }
        let blocks = rows * (rowLength / t.blockSize)
        return Requantize.Survival(weight: e.ggufName,
                                   codesChanged: t == base.info.type ? Double(survival.changedBlocks) / Double(max(1, blocks)) : 1,
                                   deltaCorrelation: survival.correlation, deltaNormRatio: survival.normRatio)
    }

    /// GGUF rows `rows` of a computed tensor in its output type, and (block types) their survival sums.
    ///
    /// Survival: Q8_0 requantized from a Q8_0 base in one pass of the kernel (codes, sums and changed
    /// blocks from the base's blocks, nothing decoded into arrays); other block types decode the
    /// base rows and the new blocks and sum them with `Bnb4bit.deltaSums`, the same order.
    private func group(_ e: Entry, source: any TensorSource, rows: Range<Int>, plain: Bool, dtype: DType,
                       outRowBytes: Int) throws -> (bytes: [UInt8], survival: DeltaComparison) {
        let rowLength = e.rowLength
        let size = TensorData.format(source.dtype).map(\.size) ?? 4
        let n = rows.count * rowLength
        let inGGUFOrder = { (destination: UnsafeMutableRawPointer) in
            try self.ggufOrder(source, rows: rows, rowLength: rowLength, size: size, permutation: e.permutation,
                               oneDimensional: e.dims.count < 2, into: destination)
        }
        if plain && source.dtype == dtype {
            return (try [UInt8](unsafeUninitializedCapacity: n * size) { try inGGUFOrder($0.baseAddress!); $1 = n * size }, DeltaComparison())
        }
        var bytes = [UInt8](uninitializedCount: rows.count * outRowBytes)  // every byte is written by the quantizer
        guard let format = TensorData.format(source.dtype) else {
            throw LoRACoreError.invalidModule(module: e.name, detail: "dtype \(source.dtype.rawValue) cannot be written to GGUF")
        }
        // The f32 values to write: read in place when the source produces f32, else widened.
        var target = [Float](uninitializedCount: n)
        if format == .f32 {
            try target.withUnsafeMutableBytes { try inGGUFOrder($0.baseAddress!) }
        } else {
            let raw = try [UInt8](unsafeUninitializedCapacity: n * size) { try inGGUFOrder($0.baseAddress!); $1 = n * size }
            raw.withUnsafeBytes { r in target.withUnsafeMutableBufferPointer { FloatCodec.decode(r, format: format, into: $0) } }
        }
        if e.type == .q8_0, let base = e.base, base.info.type == .q8_0 {
            let all = base.file.bytes(of: base.info)
            let old = UnsafeRawBufferPointer(rebasing: all[(rows.lowerBound * outRowBytes)..<(rows.upperBound * outRowBytes)])
            let result = target.withUnsafeBufferPointer { v in
                bytes.withUnsafeMutableBytes { Q8_0Blocks.requantize(v, old: old, into: $0, using: context.instructionSet) }
            }
            switch result {
            case let .success(survival): return (bytes, survival)
            case let .failure(bad): throw GGUFError.nonFiniteValue(type: e.type, tensor: e.ggufName, index: bad.index, value: target[bad.index])
            }
        }
        if plain {
            // F32/F16/BF16 from another float dtype (a converted tensor of an export): one rounding,
            // nearest even, NaN kept quiet as ggml's conversions do, in FloatCodec's vectorized loops.
            let out: FloatCodec.Format = e.type == .f16 ? .f16 : e.type == .bf16 ? .bf16 : .f32
            target.withUnsafeBufferPointer { v in bytes.withUnsafeMutableBytes { FloatCodec.encode(v, format: out, into: $0) } }
            return (bytes, DeltaComparison())
        }
        try target.withUnsafeBufferPointer { v in
            try bytes.withUnsafeMutableBytes { try GGMLQuantizer.quantize(v, type: e.type, into: $0, tensor: e.ggufName) }
        }
        guard let baseTensor = e.base else { return (bytes, DeltaComparison()) }
        // Survival: base values (GGUF order, decoded), the target, and what the blocks decode to.
        let base = try baseTensor.file.dequantize(baseTensor.info, rows: rows)
        let stored = try bytes.withUnsafeBytes { try GGMLDequantizer.dequantize($0, type: e.type, tensor: e.ggufName) }
        let sums = target.withUnsafeBufferPointer { t in
            base.withUnsafeBytes { b in stored.withUnsafeBytes { Bnb4bit.deltaSums(target: t, old: b, back: $0, format: .f32) } }
        }
        var changed = 0
        if e.type == baseTensor.info.type {
            let old = baseTensor.file.bytes(of: baseTensor.info)
            let block = e.type.typeSize
            bytes.withUnsafeBytes { new in
                let start = rows.lowerBound * outRowBytes
                for k in stride(from: 0, to: new.count, by: block) where memcmp(new.baseAddress! + k, old.baseAddress! + start + k, block) != 0 {
                    changed += 1
                }
            }
        }
        return (bytes, DeltaComparison(dot: sums.dot, want: sums.want, got: sums.got, changedBlocks: changed))
    }

    /// The bytes of GGUF rows `rows` of `source` (a transformers-ordered tensor), in GGUF order, into
    /// `destination` (`rows.count × rowLength × size` bytes): whole heads read at once and their rows
    /// permuted back; a 1-D tensor whole, permuted by element. Unpermuted rows are filled in place.
    private func ggufOrder(_ source: any TensorSource, rows: Range<Int>, rowLength: Int, size: Int,
                           permutation: GGUFRowPermutation?, oneDimensional: Bool, into destination: UnsafeMutableRawPointer) throws {
        let rowBytes = oneDimensional ? size : rowLength * size
        let (first, count) = oneDimensional ? (0, rowLength) : (rows.lowerBound, rows.count)
        let bytes = (first * rowBytes)..<((first + count) * rowBytes)
        guard let p = permutation else {
            try source.fill(bytes, into: destination)
            return
        }
        var hf = [UInt8](uninitializedCount: count * rowBytes)
        try hf.withUnsafeMutableBytes { try source.fill(bytes, into: $0.baseAddress!) }
        hf.withUnsafeBytes { from in
            for g in first..<(first + count) {
                let r = p.transformersRow(ofGGUFRow: g)
                (destination + (g - first) * rowBytes).copyMemory(from: from.baseAddress! + (r - first) * rowBytes, byteCount: rowBytes)
            }
        }
    }
}
