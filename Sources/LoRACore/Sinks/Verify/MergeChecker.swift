import LoRAGraph
import LoRAKernels
import SafeTensors

/// Checks merged tensors against base + side branch on random probes, in fp64.
///
/// For a merged module: y_side = W·x + Σ wᵢ·sᵢ·Bᵢ(Aᵢ·x) (DoRA: (m/‖W+ΔW‖) ⊙ (W·x + ΔW·x); LoHa,
/// LoKr, IA³: W·x + (W'₆₄ − W)·x, see `ProbeCheck`), and
/// y_merged = W'·x, where W' is read back from the merged checkpoint. With stored-transposed weights
/// (Conv1D, embeddings) W·x means Wᵀ·x. The error is normwise,
/// max|y_merged − y_side| / max(|W|·|x| + Σ|wᵢsᵢ|·|Bᵢ|·|Aᵢ|·|x|), which one rounding of W' to its dtype
/// bounds by the unit roundoff; `autoTolerance` adds fp32 accumulation of the rank-r product.
/// Used by `verify` and by `merge --verify` (one implementation).
struct MergeChecker {
    let plan: MergePlan
    let probes: Int
    let seed: UInt64
    /// nil = automatic from dtype and rank.
    let tolerance: Double?

    /// The automatic tolerance: 2u of the merged dtype + (2r + 16)·2⁻²⁴, plus 4·√in·2⁻²⁴ for DoRA norms.
    static func autoTolerance(format: FloatCodec.Format, rank: Int, inFeatures: Int, dora: Bool) -> Double {
        var t = 2 * FloatCodec.unitRoundoff(format) + Double(2 * rank + 16) * 0x1p-24
        if dora { t += 4 * Double(inFeatures).squareRoot() * 0x1p-24 }
        return t
    }

    /// Checks one tensor of the merged output, given its stored bytes and dtype.
    /// `mergedBytes` must be a read-only file mapping (as every input here is): pages already
    /// compared are dropped from the resident set, which would zero heap memory.
    /// - Parameters:
    ///   - name: the base tensor; `output`: its name in the merged checkpoint (nil: the same).
    func check(name: String, output: String? = nil, mergedInfo: TensorInfo, mergedBytes: UnsafeRawBufferPointer) throws -> VerifyReport.Entry {
        let family = TensorName(output ?? name).family
        func entry(_ kind: VerifyReport.Entry.Kind, passed: Bool, detail: String?, abs: Double = 0, rel: Double = 0, out: Double = 0, tol: Double = 0)
            -> VerifyReport.Entry
        {
            let probed = (kind == .merged || kind == .bias) && tol > 0
            return VerifyReport.Entry(
                tensor: output ?? name, family: family, kind: kind, exact: nil,
                probes: probed ? VerifyReport.ProbeResult(maxAbsError: abs, relativeError: rel, errorRelativeToOutput: out, tolerance: tol) : nil,
                failures: passed ? [] : [detail ?? "failed"])
        }
        let baseInfo = plan.base.info(name)!
        guard mergedInfo.shape == baseInfo.shape else {
            return entry(.copied, passed: false, detail: "shape \(mergedInfo.shape), base has \(baseInfo.shape)")
        }
        switch plan.action(for: name) {
        case .copy:
            let (ok, why) = try compareExact(kind: .copied, expected: plan.base, expectedName: name, mergedInfo: mergedInfo, mergedBytes: mergedBytes)
            return entry(.copied, passed: ok, detail: why, rel: ok ? 0 : 1)
        case let .replace(ai, tensor):
            let (ok, why) = try compareExact(kind: .replaced, expected: plan.adapters[ai].checkpoint, expectedName: tensor, mergedInfo: mergedInfo, mergedBytes: mergedBytes)
            return entry(.replaced, passed: ok, detail: why, rel: ok ? 0 : 1)
        case let .bias(cs, source):
            guard let format = TensorData.format(mergedInfo.dtype) else {
                return entry(.bias, passed: false, detail: "merged dtype \(mergedInfo.dtype.rawValue) is not a float type")
            }
            let b = try plan.startingValue(name, source: source).map(Double.init)
            var expected = b
            var scaleSum = b.map(abs)
            for c in cs {
                if let u = c.module.update {
                    // IA³ on output rows: b ⊙ l.
                    let l = try u.load(c.module, from: plan.adapters[c.adapter].checkpoint).biasFactors!
                    for i in expected.indices {
                        if plan.weights[c.adapter] < 0 { expected[i] /= Double(l[i]) } else { expected[i] *= Double(l[i]) }
                        scaleSum[i] = abs(expected[i])
                    }
                    continue
                }
                let bias = try TensorData.floats(plan.adapters[c.adapter].checkpoint, c.module.bBiasName!)
                let k = plan.weights[c.adapter] * c.module.scale
                for i in expected.indices {
                    expected[i] += k * Double(bias[i])
                    scaleSum[i] += abs(k * Double(bias[i]))
                }
            }
            let merged = decode(mergedBytes, format: format, count: expected.count)
            let tol = tolerance ?? MergeChecker.autoTolerance(format: format, rank: 1, inFeatures: 1, dora: false)
            let (absE, rel, out) = MergeChecker.errors(merged, expected, scaleSum)
            return entry(.bias, passed: rel <= tol, detail: rel <= tol ? nil : "bias differs from base bias + w·s·lora_B.bias", abs: absE, rel: rel, out: out, tol: tol)
        case .merge:
            guard let probe = try prepare(name: name, output: output, mergedInfo: mergedInfo) else {
                return entry(.merged, passed: false, detail: "merged dtype \(mergedInfo.dtype.rawValue) is not a float type")
            }
            // The whole tensor through its mappings, a block of rows at a time, each dropped from the
            // resident set once its products are taken.
            let startBytes = try probe.start.ckpt.bytes(of: probe.start.name)
            let block = max(1, (16 << 20) / max(1, probe.cols * probe.format.size))
            var r0 = 0
            while r0 < probe.rows {
                let nr = min(block, probe.rows - r0)
                let b = UnsafeRawBufferPointer(rebasing: startBytes[(r0 * probe.cols * probe.start.format.size)..<((r0 + nr) * probe.cols * probe.start.format.size)])
                let m = UnsafeRawBufferPointer(rebasing: mergedBytes[(r0 * probe.cols * probe.format.size)..<((r0 + nr) * probe.cols * probe.format.size)])
                try probe.add(rows: r0, count: nr, base: b, merged: m)
                probe.start.ckpt.dropPages(b, of: probe.start.name)
                MappedFile.releasePages(m)
                r0 += nr
            }
            return probe.entry()
        }
    }

    /// The probe check of a merged module (`.merge` action), prepared from the base and the
    /// adapters; the merged values are fed to it in blocks of stored rows (`ProbeCheck.add`).
    /// - Returns: nil when `name` is not merged or the merged dtype is not a float type.
    func prepare(name: String, output: String?, mergedInfo: TensorInfo) throws -> ProbeCheck? {
        guard case let .merge(cs, source) = plan.action(for: name), let format = TensorData.format(mergedInfo.dtype) else { return nil }
        let m0 = cs[0].module
        let (startCkpt, startName): (any TensorStore, String) = source.map { (plan.adapters[$0.adapter].checkpoint, $0.tensor) } ?? (plan.base, name)
        guard let startFormat = TensorData.format(startCkpt.info(startName)!.dtype) else { return nil }
        if cs.contains(where: { $0.module.update != nil }) {
            let steps = try ProbeStep.resolvingColumns(try cs.map { c in
                guard let u = c.module.update else { return .lora(try Factors64(c, plan: plan)) }
                return .other(try u.load(c.module, from: plan.adapters[c.adapter].checkpoint), weight: plan.weights[c.adapter])
            }, start: plan.startingSource(of: name), cols: m0.transposed ? m0.outFeatures : m0.inFeatures)
            let tol = tolerance ?? MergeChecker.autoTolerance(format: format, rank: cs.map(\.module.rank).reduce(0, +), inFeatures: m0.inFeatures, dora: false)
            return ProbeCheck(name: name, output: output, module: m0, format: format, start: (startCkpt, startName, startFormat), factors: [],
                              steps: steps, doraFactor: nil, probes: probes, seed: seed, tolerance: tol)
        }
        let factors = try cs.map { try Factors64($0, plan: plan) }
        // DoRA row factors m / ‖W + ΔW‖ over the input dimension, in fp64.
        var doraFactor: [Double]?
        if let f = factors.first, let mag = f.magnitude {
            let w0 = try plan.startingValue(name, source: source)
            let m = f.module
            // V = W + k·B·A in the (out, in) layout, fp64.
            var v = [Double](repeating: 0, count: m.outFeatures * m.inFeatures)
            for o in 0..<m.outFeatures {
                for i in 0..<m.inFeatures {
                    v[o * m.inFeatures + i] = Double(m.transposed ? w0[i * m.outFeatures + o] : w0[o * m.inFeatures + i])
                }
            }
            try GEMM.multiply(m: m.outFeatures, n: m.inFeatures, k: m.rank, alpha: f.k, a: f.b, transposeA: false,
                              b: f.a, transposeB: false, beta: 1, c: &v)
            doraFactor = (0..<m.outFeatures).map { o in
                var s = 0.0
                for i in 0..<m.inFeatures { s += v[o * m.inFeatures + i] * v[o * m.inFeatures + i] }
                return mag[o] / s.squareRoot()
            }
        }
        let tol = tolerance ?? MergeChecker.autoTolerance(format: format, rank: cs.map(\.module.rank).reduce(0, +), inFeatures: m0.inFeatures,
                                                          dora: doraFactor != nil)
        return ProbeCheck(name: name, output: output, module: m0, format: format, start: (startCkpt, startName, startFormat), factors: factors,
                          doraFactor: doraFactor, probes: probes, seed: seed, tolerance: tol)
    }

    /// Exact comparison: byte-identical, or equal to the expected value rounded once to the merged dtype.
    private func compareExact(
        kind: VerifyReport.Entry.Kind, expected ckpt: any TensorStore, expectedName: String,
        mergedInfo: TensorInfo, mergedBytes: UnsafeRawBufferPointer
    ) throws -> (Bool, String?) {
        let expectedInfo = ckpt.info(expectedName)!
        let expectedBytes = try ckpt.bytes(of: expectedName)
        if expectedInfo.dtype == mergedInfo.dtype {
            // Compared in 16 MiB chunks, each dropped from the resident set once done, so a large
            // embedding does not sit in memory twice.
            var same = expectedBytes.count == mergedBytes.count
            var offset = 0
            let chunk = 16 << 20
            while same && offset < expectedBytes.count {
                let n = min(chunk, expectedBytes.count - offset)
                same = memcmp(expectedBytes.baseAddress! + offset, mergedBytes.baseAddress! + offset, n) == 0
                ckpt.dropPages(UnsafeRawBufferPointer(rebasing: expectedBytes[offset..<(offset + n)]), of: expectedName)
                MappedFile.releasePages(UnsafeRawBufferPointer(rebasing: mergedBytes[offset..<(offset + n)]))
                offset += n
            }
            return (same, same ? nil : (kind == .copied ? "not byte-identical to the base" : "not byte-identical to the adapter's '\(expectedName)'"))
        }
        guard let from = TensorData.format(expectedInfo.dtype), let to = TensorData.format(mergedInfo.dtype) else {
            return (false, "dtype changed from \(expectedInfo.dtype.rawValue) to \(mergedInfo.dtype.rawValue)")
        }
        let n = expectedInfo.elementCount ?? 0
        let e = decode(expectedBytes, format: from, count: n)
        let m = decode(mergedBytes, format: to, count: n)
        var same = true
        for i in 0..<n {
            let want = Double(FloatCodec.roundTrip(Float(e[i]), format: to))
            if !(want == m[i] || (want.isNaN && m[i].isNaN)) { same = false; break }
        }
        return (same, same ? nil : "not equal to the \(kind == .copied ? "base" : "adapter") value cast to \(mergedInfo.dtype.rawValue)")
    }

    private func decode(_ bytes: UnsafeRawBufferPointer, format: FloatCodec.Format, count: Int) -> [Double] {
        var f = [Float](repeating: 0, count: count)
        f.withUnsafeMutableBufferPointer { FloatCodec.decode(bytes, format: format, into: $0) }
        return f.map(Double.init)
    }

    /// (max abs error, normwise relative error, ‖e‖₂/‖y‖₂). NaN anywhere counts as infinite error.
    static func errors(_ got: [Double], _ want: [Double], _ ref: [Double]) -> (Double, Double, Double) {
        var maxAbs = 0.0, maxRef = 0.0, e2 = 0.0, y2 = 0.0
        for i in got.indices {
            let d = abs(got[i] - want[i])
            if d.isNaN { return (.infinity, .infinity, .infinity) }
            maxAbs = max(maxAbs, d)
            maxRef = max(maxRef, ref[i])
            e2 += d * d
            y2 += want[i] * want[i]
        }
        let rel = maxAbs == 0 ? 0 : (maxRef > 0 ? maxAbs / maxRef : .infinity)
        let out = e2 == 0 ? 0 : (y2 > 0 ? (e2 / y2).squareRoot() : .infinity)
        return (maxAbs, rel, out)
    }
}

/// One module's factors in fp64: `a` r×in (AdaLoRA: times E), `b` out×r, k = w·s.
struct Factors64 {
    let module: AdapterModule
    let a: [Double]
    let b: [Double]
    let magnitude: [Double]?
    let k: Double

    init(_ c: MergePlan.Contribution, plan: MergePlan) throws {
        // The same loading as the merge (dialect transposes, AdaLoRA's E), widened to fp64.
        let f = try LoRAFactors(c.module, adapter: plan.adapters[c.adapter], weight: plan.weights[c.adapter])
        module = c.module
        a = f.a.map(Double.init)
        b = f.b.map(Double.init)
        magnitude = f.magnitude.map { $0.map(Double.init) }
        k = f.coefficient
    }
}

func abs8(_ v: SIMD8<Double>) -> SIMD8<Double> {
    var r = v
    for i in 0..<8 { r[i] = abs(v[i]) }
    return r
}

func formatted(_ x: Double) -> String {
    if x == 0 { return "0" }
    if !x.isFinite { return x.isNaN ? "nan" : "inf" }
    let e = Int((log10(abs(x))).rounded(.down))
    let m = x / pow(10, Double(e))
    let digits = (m * 100).rounded() / 100
    return "\(digits)e\(e)"
}

#if canImport(Glibc)
import Glibc
#endif
