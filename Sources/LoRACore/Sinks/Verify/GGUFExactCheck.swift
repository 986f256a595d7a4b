import Foundation
import GGUF
import LoRAGraph
import LoRAKernels
import SafeTensors

/// Exact mode of `verify` on a GGUF merge: one tensor of the merged file against what `GGUFSink`
/// writes for it.
///
/// - Copied tensors (the sink copies them as stored): the base's bytes, byte for byte.
/// - Computed tensors (merged, biases, replacements) are recomputed as the sink writes them: the
///   recomputed source (`MergedTensor` producing the output dtype, one rounding from the exact f32
///   merge) in F32/F16/BF16 as is, or decoded to f32 and encoded by `GGMLQuantizer` (ggml's
///   reference quantizers) in the merged tensor's type. Each recomputed row is compared with the
///   merged file's row of it in GGUF order (`GGUFRowPermutation` maps transformers rows to the
///   rows llama.cpp stores; an independent path from the sink's own permutation):
///   - block types (Q8_0, Q4_K, …) and replacements: identical bytes (requantization is
///     deterministic); a failure names the first differing block, its GGUF row, and the first
///     element it decodes to differently;
///   - merged F16/BF16 values: within 1 ulp, element by element; merged F32 values: within 4 ulp of
///     the tensor's largest magnitude over its starting value and merge's (the bounds of `ExactChecker`).
///
/// Memory: about `stepValues` values of each kind per tensor in progress.
struct GGUFExactCheck: Sendable {
    /// Values recomputed per step.
    static let stepValues = 1 << 18
    /// Bytes of a copied tensor compared per step.
    static let stepBytes = 16 << 20

    let plan: MergePlan
    /// The merged file, opened as the base is (rows readable in transformers order).
    let merged: GGUFModel

    /// Compares tensor `e` of the sink's plan with the merged file's tensor `stored` (same name,
    /// dims and type: the caller checked them).
    /// - Throws: errors reading the inputs; errors recomputing or encoding the tensor (a non-finite
    ///   merge) are reported as its failure instead.
    func check(_ e: GGUFSink.Entry, stored: GGUFTensorInfo, kind: VerifyReport.Entry.Kind) throws -> VerifyReport.Entry {
        let failure: String?
        var result: VerifyReport.ExactResult
        do {
            (result, failure) = e.changed ? try computed(e, stored: stored, kind: kind) : copied(e, stored: stored)
        } catch let error where error is LoRACoreError || error is GGUFError {
            // A merge with no finite value, or none a block type can encode.
            result = VerifyReport.ExactResult(maxUlps: .infinity, allowedUlps: 0, normwise: false, overBound: 0, worst: nil)
            failure = "cannot recompute the expected values: \(error.localizedDescription)"
        }
        return VerifyReport.Entry(tensor: e.ggufName, family: TensorName(e.name).family, kind: kind, exact: result,
                                  failures: failure.map { [$0] } ?? [])
    }

    /// An untouched tensor: the base's bytes, compared `stepBytes` at a time (each piece's pages
    /// dropped from the resident set once compared).
    private func copied(_ e: GGUFSink.Entry, stored: GGUFTensorInfo) -> (VerifyReport.ExactResult, String?) {
        let want = e.base!.file.bytes(of: e.info), got = merged.bytes(of: stored)
        var differs: Int?
        var at = 0
        while at < want.count, differs == nil {
            let piece = at..<min(want.count, at + GGUFExactCheck.stepBytes)
            let a = UnsafeRawBufferPointer(rebasing: got[piece]), b = UnsafeRawBufferPointer(rebasing: want[piece])
            if memcmp(a.baseAddress!, b.baseAddress!, piece.count) != 0 { differs = piece.lowerBound + (0..<piece.count).first { a[$0] != b[$0] }! }
            MappedFile.releasePages(a)
            MappedFile.releasePages(b)
            at = piece.upperBound
        }
        guard let differs else {
            return (VerifyReport.ExactResult(maxUlps: 0, allowedUlps: 0, normwise: false, overBound: 0, worst: nil), nil)
        }
        let rowBytes = max(1, e.info.rowByteCount)
        let result = VerifyReport.ExactResult(maxUlps: .infinity, allowedUlps: 0, normwise: false, overBound: 1, worst: nil)
        return (result, "byte \(differs) (GGUF row \(differs / rowBytes)) differs from the base's \(e.info.type.name) bytes, which an untouched tensor must equal")
    }

    /// A merged, bias or replaced tensor against the sink's encoding of its recomputed value.
    private func computed(_ e: GGUFSink.Entry, stored: GGUFTensorInfo, kind: VerifyReport.Entry.Kind) throws -> (VerifyReport.ExactResult, String?) {
        let type = stored.type
        let plain = type == .f32 || type == .f16 || type == .bf16
        let dtype: DType = type == .f16 ? .float16 : type == .bf16 ? .bfloat16 : .float32
        let source: any TensorSource = (e.source as? MergedTensor)?.producing(dtype) ?? e.source
        guard let sourceFormat = TensorData.format(source.dtype) else {
            throw LoRACoreError.invalidModule(module: e.name, detail: "dtype \(source.dtype.rawValue) cannot be written to GGUF")
        }
        let start = plan.startingSource(of: e.name)
        defer {
            source.finished()
            e.source.finished()
            start.finished()
        }
        let rowLength = e.rowLength, rows = e.rowCount
        let outRowBytes = stored.rowByteCount
        let permutation = e.permutation
        let oneDimensional = e.dims.count < 2
        let all = merged.bytes(of: stored)
        defer { MappedFile.releasePages(all) }
        var tally = Tally(bound: !plain || kind == .replaced ? .identical : (type == .f32 ? .normwise : .oneUlp), type: type, rowLength: rowLength)
        let step = max(1, GGUFExactCheck.stepValues / max(1, rowLength))
        var r0 = 0
        while r0 < rows {
            let nr = min(step, rows - r0)
            let elements = (r0 * rowLength)..<((r0 + nr) * rowLength)
            var raw = [UInt8](uninitializedCount: elements.count * sourceFormat.size)
            try raw.withUnsafeMutableBytes { try source.fill((elements.lowerBound * sourceFormat.size)..<(elements.upperBound * sourceFormat.size), into: $0.baseAddress!) }
            if oneDimensional, let p = permutation {
                // A 1-D tensor is one GGUF row, its elements permuted (as the sink writes it).
                raw = permuted(raw, size: sourceFormat.size, permutation: p)
            }
            let expected = try encode(raw, format: sourceFormat, dtype: dtype, type: type, plain: plain, tensor: e.ggufName)
            if tally.bound == .normwise {
                let startFormat = TensorData.format(start.dtype) ?? .f32
                var startRaw = [UInt8](uninitializedCount: elements.count * startFormat.size)
                try startRaw.withUnsafeMutableBytes { try start.fill((elements.lowerBound * startFormat.size)..<(elements.upperBound * startFormat.size), into: $0.baseAddress!) }
                startRaw.withUnsafeBytes { tally.noteMagnitudes($0, format: startFormat) }
                expected.withUnsafeBytes { tally.noteMagnitudes($0, format: .f32) }
            }
            expected.withUnsafeBytes { want in
                for r in r0..<(r0 + nr) {
                    let g = oneDimensional ? r : (permutation?.ggufRow(ofTransformersRow: r) ?? r)
                    tally.compareRow(g, got: UnsafeRawBufferPointer(rebasing: all[(g * outRowBytes)..<((g + 1) * outRowBytes)]),
                                     expected: UnsafeRawBufferPointer(rebasing: want[((r - r0) * outRowBytes)..<((r - r0 + 1) * outRowBytes)]))
                }
            }
            if permutation == nil || oneDimensional {
                // These stored rows are done with (permuted rows are released with the tensor).
                MappedFile.releasePages(UnsafeRawBufferPointer(rebasing: all[(r0 * outRowBytes)..<((r0 + nr) * outRowBytes)]))
            }
            r0 += nr
        }
        return tally.result(source: kind == .replaced ? "the adapter's replacement value" : "merge's value")
    }

    /// Values of `raw` (in `format`) as the sink stores them in `type`: as they are when they are
    /// already that dtype, else decoded to f32 and encoded by `GGMLQuantizer`.
    private func encode(_ raw: [UInt8], format: FloatCodec.Format, dtype: DType, type: GGMLType, plain: Bool, tensor: String) throws -> [UInt8] {
        if plain && TensorData.format(dtype) == format { return raw }
        let n = raw.count / format.size
        var values = [Float](uninitializedCount: n)
        raw.withUnsafeBytes { r in values.withUnsafeMutableBufferPointer { FloatCodec.decode(r, format: format, into: $0) } }
        return try values.withUnsafeBufferPointer { try GGMLQuantizer.quantize($0, type: type, tensor: tensor) }
    }

    /// Elements of a 1-D tensor in GGUF order.
    private func permuted(_ raw: [UInt8], size: Int, permutation p: GGUFRowPermutation) -> [UInt8] {
        var out = raw
        raw.withUnsafeBytes { from in
            out.withUnsafeMutableBytes { to in
                for g in 0..<(raw.count / size) {
                    (to.baseAddress! + g * size).copyMemory(from: from.baseAddress! + p.transformersRow(ofGGUFRow: g) * size, byteCount: size)
                }
            }
        }
        return out
    }

    /// What the rows of one computed tensor found so far, and its verdict.
    private struct Tally {
        enum Bound { case identical, oneUlp, normwise }

        let bound: Bound
        let type: GGMLType
        /// Elements (float types) or blocks (block types) over the bound.
        var over = 0
        /// The worst element: GGUF row, column, stored and expected values, distance (ulps; the
        /// absolute difference for `.normwise` until the end).
        var worst: (row: Int, column: Int, got: Double, expected: Double, distance: Double)?
        /// `.normwise`: the largest finite magnitude of W and W', and differences by binade
        /// (exponent → [exact powers of two, others]).
        var maxMagnitude: Float = 0
        var binades: [Int: (powers: Int, others: Int)] = [:]
        /// Block types: the first differing block (GGUF row, block in the row).
        var firstBlock: (row: Int, block: Int)?

        let rowLength: Int

        init(bound: Bound, type: GGMLType, rowLength: Int) {
            self.bound = bound
            self.type = type
            self.rowLength = rowLength
        }

        mutating func noteMagnitudes(_ bytes: UnsafeRawBufferPointer, format: FloatCodec.Format) {
            var values = [Float](uninitializedCount: bytes.count / format.size)
            values.withUnsafeMutableBufferPointer { FloatCodec.decode(bytes, format: format, into: $0) }
            for x in values where x.isFinite { maxMagnitude = max(maxMagnitude, abs(x)) }
        }

        mutating func compareRow(_ g: Int, got: UnsafeRawBufferPointer, expected: UnsafeRawBufferPointer) {
            guard memcmp(got.baseAddress!, expected.baseAddress!, got.count) != 0 else { return }
            guard let format = TensorData.format(type == .f16 ? .float16 : type == .bf16 ? .bfloat16 : .float32),
                  type == .f32 || type == .f16 || type == .bf16
            else {
                blocks(g, got: got, expected: expected)
                return
            }
            var a = [Float](uninitializedCount: rowLength), b = [Float](uninitializedCount: rowLength)
            a.withUnsafeMutableBufferPointer { FloatCodec.decode(got, format: format, into: $0) }
            b.withUnsafeMutableBufferPointer { FloatCodec.decode(expected, format: format, into: $0) }
            let size = format.size
            for k in 0..<rowLength {
                let gb = size == 4 ? Int(got.loadUnaligned(fromByteOffset: 4 * k, as: UInt32.self)) : Int(got.loadUnaligned(fromByteOffset: 2 * k, as: UInt16.self))
                let wb = size == 4 ? Int(expected.loadUnaligned(fromByteOffset: 4 * k, as: UInt32.self)) : Int(expected.loadUnaligned(fromByteOffset: 2 * k, as: UInt16.self))
                if gb == wb { continue }
                let gv = Double(a[k]), wv = Double(b[k])
                if gv.isNaN && wv.isNaN { continue }
                let distance: Double
                switch bound {
                case .normwise:
                    distance = gv.isNaN || wv.isNaN ? .infinity : abs(gv - wv)
                    if distance == 0 { continue }  // +0 and −0
                    let e = distance.isFinite ? Int(distance.exponent) : Int.max
                    let power = distance.isFinite && distance.significand == 1
                    binades[e, default: (0, 0)].powers += power ? 1 : 0
                    binades[e, default: (0, 0)].others += power ? 0 : 1
                case .oneUlp, .identical:
                    distance = gv.isNaN || wv.isNaN ? .infinity
                        : Double(abs(ExactChecker.ordered(gb, format: format) - ExactChecker.ordered(wb, format: format)))
                    if distance == 0 { continue }
                    if bound == .identical || distance > 1 { over += 1 }
                }
                if worst == nil || distance > worst!.distance { worst = (g, k, gv, wv, distance) }
            }
        }

        /// Block types: count the differing blocks; the first one's first differently decoded element.
        private mutating func blocks(_ g: Int, got: UnsafeRawBufferPointer, expected: UnsafeRawBufferPointer) {
            let size = type.typeSize
            for k in 0..<(got.count / size) where memcmp(got.baseAddress! + k * size, expected.baseAddress! + k * size, size) != 0 {
                over += 1
                guard firstBlock == nil else { continue }
                firstBlock = (g, k)
                let a = (try? GGMLDequantizer.dequantize(UnsafeRawBufferPointer(rebasing: got[(k * size)..<((k + 1) * size)]), type: type)) ?? []
                let b = (try? GGMLDequantizer.dequantize(UnsafeRawBufferPointer(rebasing: expected[(k * size)..<((k + 1) * size)]), type: type)) ?? []
                if let j = (0..<min(a.count, b.count)).first(where: { a[$0].bitPattern != b[$0].bitPattern }) {
                    worst = (g, k * type.blockSize + j, Double(a[j]), Double(b[j]), .infinity)
                }
            }
        }

        /// The tensor's result and its failure sentence (nil when it passed).
        func result(source: String) -> (VerifyReport.ExactResult, String?) {
            var over = self.over, distance = worst?.distance ?? 0
            var allowed = 0.0
            switch bound {
            case .identical: break
            case .oneUlp: allowed = 1
            case .normwise:
                allowed = ExactChecker.f32AllowedUlps
                // ulp(M) of f32; the bound 4·ulp(M) is a power of two 2^k: over it are the differences
                // of a higher binade, and those of binade k that are not exactly 2^k.
                let unit = Double(maxMagnitude.ulp)
                let k = Int((allowed * unit).exponent)
                over = binades.reduce(0) { $0 + ($1.key > k ? $1.value.powers + $1.value.others : ($1.key == k ? $1.value.others : 0)) }
                distance /= unit
            }
            let element = worst.map {
                VerifyReport.ExactResult.Element(index: $0.row * rowLength + $0.column, row: $0.row, column: $0.column, got: $0.got, expected: $0.expected, ulps: distance)
            }
            let result = VerifyReport.ExactResult(maxUlps: firstBlock != nil ? .infinity : distance, allowedUlps: allowed,
                                                  normwise: bound == .normwise, overBound: over, worst: element)
            guard over > 0 else { return (result, nil) }
            if let (row, block) = firstBlock {
                let values = worst.map { ": it decodes element \($0.column) of the row to \(shortest($0.got)), expected \(shortest($0.expected))" } ?? ""
                let count = over == 1 ? "1 block differs" : "\(over) blocks differ"
                return (result, "GGUF row \(row), block \(block) is not the \(type.name) requantization of \(source) (identical codes expected: requantization is deterministic)\(values); \(count)")
            }
            guard let w = worst else { return (result, nil) }
            let position = "GGUF row \(w.row), col \(w.column): got \(shortest(w.got)), expected \(shortest(w.expected))"
            let how: String
            switch bound {
            case .identical: how = "differs from \(source) in \(type.name), which it must equal"
            case .oneUlp: how = distance.isFinite ? "\(Int(distance)) ulp from \(source) (\(type.name) allows 1)" : "not \(source) (NaN or Inf)"
            case .normwise:
                how = distance.isFinite
                    ? "\(shortest(distance)) ulp of the tensor's largest magnitude \(shortest(Double(maxMagnitude))) from \(source) (F32 allows \(Int(allowed)))"
                    : "not \(source) (NaN or Inf)"
            }
            return (result, "\(position), \(how); \(over == 1 ? "1 element" : "\(over) elements") over the bound")
        }
    }
}
