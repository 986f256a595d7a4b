import LoRAKernels
import SafeTensors

/// A module's LoRA factors in float32, ready for GEMM.
///
/// `a` is r×in row-major (for AdaLoRA already multiplied row-wise by E), `b` is out×r, `bias` and
/// `magnitude` have `out` elements. `coefficient` = weight × scale, the factor on B·A.
struct LoRAFactors {
    let module: AdapterModule
    let a: [Float]
    let b: [Float]
    let bias: [Float]?
    let magnitude: [Float]?
    let coefficient: Double

    init(_ module: AdapterModule, adapter: Adapter, weight: Double) throws {
        self.module = module
        var a = try TensorData.floats(adapter.checkpoint, module.aName)
        if let e = module.eName {
            let eValues = try TensorData.floats(adapter.checkpoint, e)
            for k in 0..<module.rank {
                for j in 0..<module.inFeatures { a[k * module.inFeatures + j] *= eValues[k] }
            }
        }
        self.a = a
        b = try TensorData.floats(adapter.checkpoint, module.bName)
        bias = try module.bBiasName.map { try TensorData.floats(adapter.checkpoint, $0) }
        magnitude = try module.magnitudeName.map { try TensorData.floats(adapter.checkpoint, $0) }
        coefficient = weight * module.scale
    }

    /// W ← W + coefficient · ΔW in float32, in the stored layout (B·A or (B·A)ᵀ through sgemm, so
    /// the product is rounded once to fp32, scaled, and added, as PEFT's merge does). For DoRA, then
    /// W ← (m / ‖W‖ per output) ⊙ W with the norm in fp32 over the input dimension.
    func apply(to w: inout [Float]) throws {
        let m = module
        try w.withUnsafeMutableBufferPointer { wp in
            try a.withUnsafeBufferPointer { ap in
                try b.withUnsafeBufferPointer { bp in
                    if m.transposed {
                        try GEMM.multiply(
                            m: m.inFeatures, n: m.outFeatures, k: m.rank, alpha: Float(coefficient),
                            a: ap.baseAddress!, transposeA: true, b: bp.baseAddress!, transposeB: true,
                            beta: 1, c: wp.baseAddress!)
                    } else {
                        try GEMM.multiply(
                            m: m.outFeatures, n: m.inFeatures, k: m.rank, alpha: Float(coefficient),
                            a: bp.baseAddress!, transposeA: false, b: ap.baseAddress!, transposeB: false,
                            beta: 1, c: wp.baseAddress!)
                    }
                }
            }
        }
        if let magnitude {
            let norms = LoRAFactors.outputNorms(w, module: m)
            for o in 0..<m.outFeatures {
                let factor = magnitude[o] / norms[o]
                if m.transposed {
                    for i in 0..<m.inFeatures { w[i * m.outFeatures + o] *= factor }
                } else {
                    let base = o * m.inFeatures
                    for i in 0..<m.inFeatures { w[base + i] *= factor }
                }
            }
        }
    }

    /// ‖row o‖₂ of the (out, in) view of `w`, accumulated in Double and rounded to Float.
    static func outputNorms(_ w: [Float], module m: AdapterModule) -> [Float] {
        var norms = [Double](repeating: 0, count: m.outFeatures)
        if m.transposed {
            for i in 0..<m.inFeatures {
                let row = i * m.outFeatures
                for o in 0..<m.outFeatures { let v = Double(w[row + o]); norms[o] += v * v }
            }
        } else {
            for o in 0..<m.outFeatures {
                var s = 0.0
                let row = o * m.inFeatures
                for i in 0..<m.inFeatures { let v = Double(w[row + i]); s += v * v }
                norms[o] = s
            }
        }
        return norms.map { Float($0.squareRoot()) }
    }
}
