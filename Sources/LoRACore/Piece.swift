import Foundation
import LoRAKernels
import SafeTensors

/// A unit of merge output: a whole tensor, or a block of its stored rows.
///
/// Blocks keep memory independent of tensor size: about `Piece.blockElements` fp32 values per
/// piece in flight. Tensors that need all rows at once (DoRA on transposed storage, biases,
/// scalars) are one piece; unchanged tensors are one `sendfile` piece.
struct Piece: Sendable {
    enum Work: Sendable {
        /// Unchanged bytes, copied file to file.
        case copy
        /// Rows `[r0, r0 + count)` of a computed (merged or cast) tensor with `cols` values per row.
        case rows(r0: Int, count: Int, cols: Int)
        /// The whole tensor computed at once.
        case whole
    }

    let tensor: TensorInfo
    let work: Work
    let isLast: Bool

    /// fp32 values per block: 4 Mi values = 16 MiB of working memory per piece.
    static let blockElements = 1 << 22

    /// Splits the output tensors of one shard, in write order, into pieces.
    static func plan(_ order: [TensorInfo], plan: MergePlan) -> [Piece] {
        var pieces: [Piece] = []
        for t in order {
            let baseInfo = plan.base.info(plan.source(of: t.name))!
            let action = plan.action(for: plan.source(of: t.name))
            switch action {
            case .copy where t.dtype == baseInfo.dtype:
                pieces.append(Piece(tensor: t, work: .copy, isLast: true))
                continue
            case let .replace(ai, tensor) where plan.adapters[ai].checkpoint.info(tensor)!.dtype == t.dtype:
                pieces.append(Piece(tensor: t, work: .copy, isLast: true))
                continue
            case let .merge(cs, _) where cs.contains { $0.module.isDoRA && $0.module.transposed }:
                pieces.append(Piece(tensor: t, work: .whole, isLast: true))
                continue
            case .bias:
                pieces.append(Piece(tensor: t, work: .whole, isLast: true))
                continue
            default:
                break
            }
            guard t.shape.count >= 2, let n = t.elementCount, n > 0 else {
                pieces.append(Piece(tensor: t, work: .whole, isLast: true))
                continue
            }
            let rows = t.shape[0], cols = n / rows
            let per = max(1, blockElements / max(cols, 1))
            var r0 = 0
            while r0 < rows {
                let count = min(per, rows - r0)
                pieces.append(Piece(tensor: t, work: .rows(r0: r0, count: count, cols: cols), isLast: r0 + count == rows))
                r0 += count
            }
        }
        return pieces
    }

    /// Computes this piece's output bytes (or says where to copy them from).
    func produce(plan: MergePlan, cache: FactorCache) throws -> Merge.Produced {
        let name = plan.source(of: tensor.name)
        let outFormat = TensorData.format(tensor.dtype)
        switch work {
        case .copy:
            if case let .replace(ai, source) = plan.action(for: name) {
                return .copied(plan.adapters[ai].checkpoint.location(of: source)!)
            }
            return .copied(plan.base.location(of: name)!)
        case .whole:
            try MemoryBudget.check(elements: tensor.elementCount ?? 0, bytesPerElement: 8, what: "tensor '\(name)' (merged whole)")
            return try Merge.produce(tensor, baseInfo: plan.base.info(name)!, plan: plan)
        case let .rows(r0, count, cols):
            if case let .merge(cs, _) = plan.action(for: name) {
                let factors = try cache.factors(for: name, contributions: cs)
                if let fused = try fusedRows(name, r0: r0, count: count, cols: cols, factors: factors, output: outFormat!, plan: plan) {
                    return .owned(fused)
                }
            }
            var block = try startingRows(name, r0: r0, count: count, cols: cols, plan: plan)
            if case let .merge(cs, _) = plan.action(for: name) {
                let factors = try cache.factors(for: name, contributions: cs)
                try factors.apply(toRows: r0, count: count, block: &block)
                // One pass in the common case: only a non-finite result re-reads the starting rows.
                if !block.withUnsafeBufferPointer(FloatCodec.allFinite),
                   try startingRows(name, r0: r0, count: count, cols: cols, plan: plan).withUnsafeBufferPointer(FloatCodec.allFinite) {
                    throw LoRACoreError.nonFinite(module: cs[0].module.module)
                }
            }
            return .owned(TensorData.encode(block, format: outFormat!))
        }
    }

    /// The merged rows in one pass of the fused kernel (decode, rank-r update, finiteness check and
    /// rounding per register tile, no fp32 block in memory), with the same arithmetic as the GEMM
    /// path; nil where that kernel does not apply (transposed storage, DoRA, a CPU without AVX2).
    private func fusedRows(_ name: String, r0: Int, count: Int, cols: Int, factors: LoRAFactors,
                           output: FloatCodec.Format, plan: MergePlan) throws -> [UInt8]? {
        let m = factors.module
        guard FusedMerge.best != nil, !m.transposed, factors.magnitude == nil, cols == m.inFeatures else { return nil }
        let (slice, input) = try startingSlice(name, r0: r0, count: count, cols: cols, plan: plan)
        var outcome: FusedMerge.Outcome?
        let bytes = [UInt8](unsafeUninitializedCapacity: count * cols * output.size) { buffer, initialized in
            factors.a.withUnsafeBufferPointer { a in
                factors.b.withUnsafeBufferPointer { b in
                    outcome = FusedMerge.rows(
                        slice, input: input, into: UnsafeMutableRawBufferPointer(buffer), output: output,
                        rows: count, cols: cols, b: UnsafeBufferPointer(rebasing: b[(r0 * m.rank)...]), rank: m.rank,
                        a: a, leadingA: m.inFeatures, coefficient: Float(factors.coefficient))
                }
            }
            initialized = outcome == nil ? 0 : count * cols * output.size
        }
        guard let outcome else { return nil }
        MappedFile.releasePages(slice)
        if outcome.resultNonFinite && !outcome.inputNonFinite { throw LoRACoreError.nonFinite(module: m.module) }
        return bytes
    }

    /// Rows `[r0, r0+count)` of the starting value (replacement or base) as stored, with their format.
    private func startingSlice(_ name: String, r0: Int, count: Int, cols: Int, plan: MergePlan) throws
        -> (UnsafeRawBufferPointer, FloatCodec.Format)
    {
        var ckpt = plan.base, source = name
        switch plan.action(for: name) {
        case let .replace(ai, tensor), let .merge(_, (ai, tensor)?):
            ckpt = plan.adapters[ai].checkpoint
            source = tensor
        default: break
        }
        let info = ckpt.info(source)!
        guard let format = TensorData.format(info.dtype) else {
            throw LoRACoreError.invalidModule(module: name, detail: "dtype \(info.dtype.rawValue) cannot be merged or cast (F32, F16 and BF16 can)")
        }
        let bytes = try ckpt.bytes(of: source)
        let n = count * cols
        return (UnsafeRawBufferPointer(rebasing: bytes[(r0 * cols * format.size)..<((r0 * cols + n) * format.size)]), format)
    }

    /// Rows `[r0, r0+count)` of the starting value (replacement or base) widened to fp32.
    private func startingRows(_ name: String, r0: Int, count: Int, cols: Int, plan: MergePlan) throws -> [Float] {
        let (slice, format) = try startingSlice(name, r0: r0, count: count, cols: cols, plan: plan)
        let n = count * cols
        let values = [Float](unsafeUninitializedCapacity: n) { buffer, initialized in
            FloatCodec.decode(slice, format: format, into: UnsafeMutableBufferPointer(rebasing: buffer[0..<n]))
            initialized = n
        }
        // These input rows are done with: drop their pages from the resident set (file mapping).
        MappedFile.releasePages(slice)
        return values
    }
}

/// Each merged tensor's LoRA factors, loaded once and shared by the workers computing its blocks.
/// `@unchecked Sendable`: the dictionary is only touched under `lock`; factors are immutable.
final class FactorCache: @unchecked Sendable {
    private let plan: MergePlan
    private let lock = NSLock()
    private var loaded: [String: LoRAFactors] = [:]

    init(plan: MergePlan) { self.plan = plan }

    func factors(for name: String, contributions cs: [MergePlan.Contribution]) throws -> LoRAFactors {
        lock.lock()
        defer { lock.unlock() }
        if let f = loaded[name] { return f }
        let parts = try cs.map { try LoRAFactors($0.module, adapter: plan.adapters[$0.adapter], weight: plan.weights[$0.adapter]) }
        let f = parts.count == 1 ? parts[0] : LoRAFactors.concatenated(parts)
        loaded[name] = f
        return f
    }

    func remove(_ name: String) {
        lock.lock()
        loaded[name] = nil
        lock.unlock()
    }
}
