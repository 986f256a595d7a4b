import SafeTensors

/// LyCORIS DoRA (`weight_decompose`, a module's `dora_scale`) on a LoHa or LoKr module, as
/// lycoris 4.1.3's forward applies it (`functional/general.py` `_weight_decompose`, `wd_on_out`):
/// W' = (W + ΔW) · m / (‖W + ΔW‖ + ε) per output row, ‖·‖ over the row's flattened inputs (and a
/// convolution's kernel), m = `dora_scale` (out, 1, …), ε = fp32's machine epsilon (`torch.finfo`),
/// which PEFT's DoRA does not add.
///
/// Rounding, as lycoris on fp32 values: W + ΔW in fp32 (the type's own steps), the row's sum of
/// squares in torch's AVX2 order (`LoRAFactors.laneSumOfSquares`), √ + ε, m / that, then each element
/// times it, each step one fp32 rounding; then once to the output dtype. (On a 16-bit base lycoris
/// rounds W + ΔW to the base's dtype before the norm; lora-tool keeps it in fp32, as for every type.)
/// Norms per input column (`wd_on_out` false, dora_scale (1, in, …)) are refused.
struct WeightDecompose: LoadedUpdate {
    let inner: any LoadedUpdate
    /// m per output row.
    let magnitude: [Float]
    static let epsilon = Float.ulpOfOne

    /// Checks a module's `dora_scale` against its `out` rows.
    /// - Throws: `LoRACoreError.invalidModule` for a PEFT file (PEFT's LoHa and LoKr have no DoRA), per-input
    ///   norms, or another shape.
    static func check(_ info: TensorInfo, out: Int, origin: UpdateOrigin, module: String, type: String) throws {
        if case .peft = origin {
            throw LoRACoreError.invalidModule(module: module, detail: "tensor '\(info.name)': PEFT's \(type) has no dora_scale (LyCORIS DoRA)")
        }
        guard TensorData.format(info.dtype) != nil else {
            throw LoRACoreError.invalidModule(module: module, detail: "tensor '\(info.name)' has dtype \(info.dtype.rawValue); dora_scale must be F32, F16 or BF16")
        }
        if info.shape.count >= 2, info.shape[0] == 1, info.shape[1] > 1, info.shape.dropFirst(2).allSatisfy({ $0 == 1 }) {
            throw LoRACoreError.invalidModule(
                module: module, detail: "tensor '\(info.name)' \(info.shape): LyCORIS DoRA with norms per input column (wd_on_out false) is not supported yet")
        }
        guard info.shape.first == out, info.shape.dropFirst().allSatisfy({ $0 == 1 }) else {
            throw LoRACoreError.invalidModule(module: module, detail: "tensor '\(info.name)' has shape \(info.shape), expected [\(out), 1, …] (one magnitude per output row)")
        }
    }

    func apply(toRows r0: Int, count: Int, cols: Int, block: inout [Float], weight: Float) {
        inner.apply(toRows: r0, count: count, cols: cols, block: &block, weight: weight)
        var row = [Float](repeating: 0, count: cols)
        for r in 0..<count {
            for j in 0..<cols { row[j] = block[r * cols + j] }
            let factor = magnitude[r0 + r] / (LoRAFactors.laneSumOfSquares(row).squareRoot() + Self.epsilon)
            for j in 0..<cols { block[r * cols + j] *= factor }
        }
    }

    func apply64(toRows r0: Int, count: Int, cols: Int, block: inout [Double], weight: Double) {
        inner.apply64(toRows: r0, count: count, cols: cols, block: &block, weight: weight)
        for r in 0..<count {
            var sum = 0.0
            for j in 0..<cols { sum += block[r * cols + j] * block[r * cols + j] }
            let factor = Double(magnitude[r0 + r]) / (sum.squareRoot() + Double(Self.epsilon))
            for j in 0..<cols { block[r * cols + j] *= factor }
        }
    }
}
