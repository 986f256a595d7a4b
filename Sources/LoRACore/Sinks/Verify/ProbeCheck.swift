import Foundation
import LoRAGraph
import LoRAKernels
import SafeTensors

/// The probe check of one merged module, fed the stored base and merged values a block of stored
/// rows at a time, in any order and from any thread (`add`), then judged (`entry`).
///
/// LoHa, LoKr and IA³ (`steps`) have no B·A: their side branch is (W'₆₄ − W)·x, W'₆₄ the
/// contributions applied to each block's starting rows in fp64 by the types' `apply64`.
///
/// Per pass of eight probes, the products y_W = W·x, d = (W' − W)·x and the row norms ‖W‖ are
/// accumulated over the blocks (`ProbeProducts.fused` on each block: rows of (out, in) storage give
/// their own outputs; rows of (in, out) storage add to every output). `entry` adds the side branch
/// Σ k·B·(A·x), computed from the factors alone, and applies `MergeChecker`'s normwise criterion.
/// Exact mode feeds it the blocks it has just read, so `--mode both` reads the merged file once.
///
/// `@unchecked Sendable`: the accumulators are touched only under `lock`; the rest is immutable.
final class ProbeCheck: @unchecked Sendable {
    let name: String
    let output: String?
    let module: AdapterModule
    /// The merged dtype's format.
    let format: FloatCodec.Format
    /// Where the starting value (base, or a replacement) is stored.
    let start: (ckpt: any TensorStore, name: String, format: FloatCodec.Format)
    let rows: Int, cols: Int
    private let factors: [Factors64]
    /// LoHa, LoKr, IA³ (alone or mixed with LoRA): the contributions in adapter order, applied in
    /// fp64 to each block's starting rows; the side branch is then (W'₆₄ − W)·x, summed per block.
    private let steps: [ProbeStep]?
    private let doraFactor: [Double]?
    private let tolerance: Double
    /// Per pass: the probes (inDim × 8, row-major, unused lanes zero) and how many lanes are used.
    private let passes: [(x: [Double], lanes: Int)]
    private let lock = NSLock()
    private var difference: [[Double]], base: [[Double]]
    private var norms2: [Double]
    /// Per pass, for `steps`: the side branch and its reference scale |ΔW|·|x| (outDim × 8).
    private var stepSide: [[Double]], stepScale: [[Double]]

    init(name: String, output: String?, module m: AdapterModule, format: FloatCodec.Format, start: (ckpt: any TensorStore, name: String, format: FloatCodec.Format),
         factors: [Factors64], steps: [ProbeStep]? = nil, doraFactor: [Double]?, probes: Int, seed: UInt64, tolerance: Double) {
        self.name = name
        self.output = output
        module = m
        self.format = format
        self.start = start
        self.factors = factors
        self.steps = steps
        self.doraFactor = doraFactor
        self.tolerance = tolerance
        rows = m.transposed ? m.inFeatures : m.outFeatures  // stored rows
        cols = m.transposed ? m.outFeatures : m.inFeatures
        var gen = ProbeGenerator(seed: seed, name: name)
        var passes: [(x: [Double], lanes: Int)] = []
        var remaining = probes
        // Eight probes per pass over the matrix; the last pass is padded with zero probes.
        while remaining > 0 {
            let lanes = min(8, remaining)
            remaining -= lanes
            var x = [Double](repeating: 0, count: m.inFeatures * 8)
            for p in 0..<lanes { for i in 0..<m.inFeatures { x[i * 8 + p] = gen.next() } }
            passes.append((x, lanes))
        }
        self.passes = passes
        difference = passes.map { _ in [Double](repeating: 0, count: m.outFeatures * 8) }
        base = difference
        stepSide = difference
        stepScale = difference
        norms2 = [Double](repeating: 0, count: m.outFeatures)
    }

    /// The change `steps` make to stored rows `[r0, r0 + count)` (starting values `start`), in fp64.
    private func stepChange(rows r0: Int, count nr: Int, start: UnsafeRawBufferPointer) -> [Double] {
        var w32 = [Float](repeating: 0, count: nr * cols)
        w32.withUnsafeMutableBufferPointer { FloatCodec.decode(start, format: self.start.format, into: $0) }
        let w = w32.map(Double.init)
        var v = w
        for step in steps ?? [] { step.apply(toRows: r0, count: nr, cols: cols, block: &v) }
        for i in v.indices { v[i] -= w[i] }
        return v
    }

    /// Adds stored rows `[r0, r0 + count)`: `base` and `merged` hold exactly those rows' bytes.
    /// - Throws: what the BLAS path throws.
    func add(rows r0: Int, count nr: Int, base b: UnsafeRawBufferPointer, merged w: UnsafeRawBufferPointer) throws {
        let transposed = module.transposed
        if steps != nil {
            // Stored (out, in) rows: each output's side branch is complete within its block.
            let change = stepChange(rows: r0, count: nr, start: b)
            lock.lock()
            for (p, pass) in passes.enumerated() {
                for r in 0..<nr {
                    for l in 0..<8 {
                        var side = 0.0, scale = 0.0
                        for j in 0..<cols {
                            side += change[r * cols + j] * pass.x[j * 8 + l]
                            scale += abs(change[r * cols + j]) * abs(pass.x[j * 8 + l])
                        }
                        stepSide[p][(r0 + r) * 8 + l] = side
                        stepScale[p][(r0 + r) * 8 + l] = scale
                    }
                }
            }
            lock.unlock()
        }
        for (p, pass) in passes.enumerated() {
            // Stored (in, out): these rows are inputs r0..<r0+nr, so only their probe values take part.
            let x = transposed ? Array(pass.x[(r0 * 8)..<((r0 + nr) * 8)]) : pass.x
            let products = try ProbeProducts.fused(rows: nr, cols: cols, transposed: transposed, base: b, baseFormat: start.format,
                                                   merged: w, mergedFormat: format, x: x, exactBase: doraFactor != nil)
            lock.lock()
            if transposed {
                for i in products.difference.indices {
                    difference[p][i] += products.difference[i]
                    base[p][i] += products.base[i]
                }
                if p == 0 { for o in products.outputNorms.indices { norms2[o] += Double(products.outputNorms[o]) * Double(products.outputNorms[o]) } }
            } else {
                for i in products.difference.indices {
                    difference[p][r0 * 8 + i] = products.difference[i]
                    base[p][r0 * 8 + i] = products.base[i]
                }
                if p == 0 { for o in products.outputNorms.indices { norms2[r0 + o] = Double(products.outputNorms[o]) * Double(products.outputNorms[o]) } }
            }
            lock.unlock()
        }
    }

    /// The verdict once every stored row has been added.
    func entry() -> VerifyReport.Entry {
        lock.lock()
        defer { lock.unlock() }
        let inDim = module.inFeatures, outDim = module.outFeatures
        var ySide: [Double] = [], yMerged: [Double] = [], scaleRef: [Double] = []
        for (p, pass) in passes.enumerated() {
            let x = (0..<inDim).map { i in SIMD8<Double>((0..<8).map { pass.x[i * 8 + $0] }) }
            var xNorm = SIMD8<Double>()
            for v in x { xNorm += v * v }
            for l in 0..<8 { xNorm[l] = xNorm[l].squareRoot() }
            // Scale of one rounding per output: ‖W row‖₂·‖x‖₂ ≥ Σ|W||x| (Cauchy–Schwarz).
            var ref = norms2.map { SIMD8<Double>(repeating: Double(Float($0.squareRoot()))) * xNorm }
            // Side branch: Σ k·B·(A·x), and |k|·|B|·(|A|·|x|) for the reference scale.
            var side = [SIMD8<Double>](repeating: .zero, count: outDim)
            let absX = x.map(abs8)
            for f in factors {
                let m = f.module
                var ax = [SIMD8<Double>](repeating: .zero, count: m.rank), aAbsX = ax
                ProbeProducts.multiply(rows: m.rank, cols: inDim, matrix: f.a, x: x, y: &ax)
                ProbeProducts.multiply(rows: m.rank, cols: inDim, matrix: f.a.map(abs), x: absX, y: &aAbsX)
                var bax = [SIMD8<Double>](repeating: .zero, count: outDim), babs = bax
                ProbeProducts.multiply(rows: outDim, cols: m.rank, matrix: f.b, x: ax, y: &bax)
                ProbeProducts.multiply(rows: outDim, cols: m.rank, matrix: f.b.map(abs), x: aAbsX, y: &babs)
                for o in 0..<outDim {
                    side[o] += SIMD8(repeating: f.k) * bax[o]
                    ref[o] += SIMD8(repeating: abs(f.k)) * babs[o]
                }
            }
            if steps != nil {
                for o in 0..<outDim {
                    side[o] = SIMD8((0..<8).map { stepSide[p][o * 8 + $0] })
                    ref[o] += SIMD8((0..<8).map { stepScale[p][o * 8 + $0] })
                }
            }
            for o in 0..<outDim {
                var ys = SIMD8<Double>(), ym = SIMD8<Double>()
                var rf = ref[o]
                for l in 0..<8 {
                    let b = base[p][o * 8 + l], diff = difference[p][o * 8 + l]
                    if let fac = doraFactor {
                        ys[l] = (b + side[o][l]) * fac[o]
                        ym[l] = b + diff
                    } else {
                        // y_merged − y_side = (W'−W)·x − Σk·B·A·x exactly, whatever the precision of W·x.
                        ys[l] = b + side[o][l]
                        ym[l] = ys[l] + (diff - side[o][l])
                    }
                }
                if let fac = doraFactor { rf *= SIMD8(repeating: max(1, abs(fac[o]))) }
                for l in 0..<pass.lanes {
                    ySide.append(ys[l])
                    yMerged.append(ym[l])
                    scaleRef.append(rf[l])
                }
            }
        }
        let (absE, rel, out) = MergeChecker.errors(yMerged, ySide, scaleRef)
        let passed = rel <= tolerance
        return VerifyReport.Entry(
            tensor: output ?? name, family: TensorName(output ?? name).family, kind: .merged, exact: nil,
            probes: VerifyReport.ProbeResult(maxAbsError: absE, relativeError: rel, errorRelativeToOutput: out, tolerance: tolerance),
            failures: passed ? [] : ["W'·x differs from W·x + side branch (relative error \(formatted(rel)) > \(formatted(tolerance)))"])
    }
}

/// One contribution to a probed weight, for the fp64 side branch of LoHa, LoKr and IA³ merges.
enum ProbeStep {
    case lora(Factors64)
    case other(any LoadedUpdate, weight: Double)

    /// Stored rows `[r0, r0 + count)` in `block` (fp64, `cols` wide) ← this step's update of them.
    func apply(toRows r0: Int, count nr: Int, cols: Int, block v: inout [Double]) {
        switch self {
        case let .lora(f):
            for r in 0..<nr {
                for k in 0..<f.module.rank {
                    let bk = f.k * f.b[(r0 + r) * f.module.rank + k]
                    for j in 0..<cols { v[r * cols + j] += bk * f.a[k * cols + j] }
                }
            }
        case let .other(u, weight):
            u.apply64(toRows: r0, count: nr, cols: cols, block: &v, weight: weight)
        }
    }

    /// `steps` with each step that needs every row of its input (LyCORIS DoRA per input column)
    /// resolved in fp64 from `start` (stored (out, in) rows, `cols` wide) streamed through the steps
    /// before it, a block of rows at a time.
    static func resolvingColumns(_ steps: [ProbeStep], start: any TensorSource, cols: Int) throws -> [ProbeStep] {
        var resolved = steps
        var raw: [UInt8] = []
        let rows = start.elementCount / max(1, cols)
        for i in resolved.indices {
            guard case let .other(u, weight) = resolved[i], u.needsAllRows else { continue }
            let before = resolved[..<i]
            let u2 = try u.resolvingColumns(rows: rows, cols: cols, weight: Float(weight), input: nil) { r0, count, block in
                var w = [Float](repeating: 0, count: count * cols)
                try w.withUnsafeMutableBufferPointer { try start.floats((r0 * cols)..<((r0 + count) * cols), into: $0, raw: &raw) }
                block = w.map(Double.init)
                for s in before { s.apply(toRows: r0, count: count, cols: cols, block: &block) }
            }
            resolved[i] = .other(u2, weight: weight)
        }
        return resolved
    }
}
