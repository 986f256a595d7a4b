import Foundation
import LoRAGraph
import LoRAKernels
import SafeTensors

/// Options of `convert --to lora`: any additive adapter as plain LoRA, by SVD of each ΔW.
public struct ConvertToLoRAOptions: Sendable {
    public var adapter: String
    public var output: String
    public var rule: ExtractSVDOptions.RankRule
    /// The model the adapter is for: needed for VeRA and IA³ (their ΔW depends on the weight's
    /// shape or values), and gives exact PEFT `target_modules`.
    public var base: String?
    public var powerIterations = 1
    public var force = false
    public var zstdLevel: Int32?
    public var scaleOverride = AdapterScaleOverride()

    public init(adapter: String, output: String, rule: ExtractSVDOptions.RankRule) {
        self.adapter = adapter
        self.output = output
        self.rule = rule
    }
}

/// `convert ADAPTER --to lora --rank R | --energy P`: each module's ΔW (LoHa, LoKr, VeRA, FourierFT, LoRA;
/// IA³ as W ⊙ l − W, which needs `--base`) computed in fp32 exactly as merge computes it, then
/// factored by truncated SVD (`ExtractSVD.factorize`: A = √S·Vᵀ, B = U·√S) into a PEFT LoRA
/// adapter with scale 1 (α = each module's rank), as PEFT's `convert_to_lora` does. The report gives
/// each module's rank, energy kept and relative Frobenius error ‖ΔW − B·A‖/‖ΔW‖, which for the
/// full SVD is the optimal one of its rank (Eckart–Young).
///
/// Refused with the reason: trainable tokens (a replacement, not a change of low rank), DoRA
/// (its merge rescales the weight), IA³ on a module whose bias it scales, Conv1D (fan_in_fan_out)
/// modules and Conv3d kernels, and replacement tensors. A Conv2d module's ΔW is its flat
/// (out, in·kh·kw) view, written as PEFT's conv LoRA: A (r, in, kh, kw), B (out, r, 1, 1) (a
/// Conv1d's: A (r, in, k), B (out, r, 1)) (needs `--base`).
public enum ConvertToLoRA {
    public static func run(_ options: ConvertToLoRAOptions) throws -> ExtractSVDReport {
        try PathSafety.checkOutput(options.output, inputs: [options.adapter] + (options.base.map { [$0] } ?? []))
        let adapter = try Adapter(path: options.adapter, scale: options.scaleOverride)
        let base = try options.base.map { try Checkpoint(path: $0) }
        if let r = adapter.replacements.first {
            throw LoRACoreError.unsupportedAdapter(path: adapter.path, detail: "plain LoRA cannot hold full replacement tensors ('\(r.base)', modules_to_save)")
        }
        try adapter.refuseParameterTargets("convert --to lora")
        try adapter.refuseImageModel("convert --to lora")
        try ResidualInitialisation.refuse(adapter, "convert --to lora")
        var modules = adapter.modules
        if let base { modules = try adapter.modules(resolvedAgainst: base) } else if adapter.format == .kohya || adapter.format == .lycoris {
            throw LoRACoreError.invalidRequest("\(options.adapter): kohya-style names flatten module paths; give --base so they can be matched to the model's modules")
        }
        guard !modules.isEmpty else { throw LoRACoreError.invalidRequest("\(options.adapter): no modules to convert") }
        var report = ExtractSVDReport(modules: [], skipped: [], otherDifferences: [])
        var tensors: [AdapterSink.Tensor] = []
        var ranks: [(module: String, rank: Int)] = []
        GEMM.setThreads(1)
        for (resolved, original) in zip(modules, adapter.modules) {
            var m = resolved
            if let base {
                guard let info = base.info(m.baseWeightName), m.fits(info.shape) else {
                    throw LoRACoreError.baseMismatch(module: m.module, detail: "base '\(m.baseWeightName)' is missing or has another shape than \(m.expectedShapeDescription)")
                }
                m = m.fitted(to: info.shape)
            }
            // A convolution's ΔW is its flat (out, in·k…) view; its LoRA is PEFT's conv LoRA, A (r, in, k…)
            // and B (out, r, 1…), whose merge is that B·A. The kernel's shape comes from the base.
            let kernelShape = m.convShape ?? base?.info(m.baseWeightName).flatMap { $0.shape.count > 2 ? $0.shape : nil }
            if kernelShape == nil && (m.update?.kernel != nil || (base?.info(m.baseWeightName)?.shape.count ?? 2) > 2) {
                throw LoRACoreError.invalidRequest("module '\(m.module)': \(m.typeName) on a convolution needs the kernel's shape: give --base")
            }
            if let k = kernelShape, k.count != 3 && k.count != 4 {
                throw LoRACoreError.invalidModule(module: m.module, detail: "a \(k.count - 2)-D convolution (\(k)) is not converted to LoRA: lora-tool's LoRA holds linear, Conv1d and Conv2d factors")
            }
            let (delta, rows, cols) = try self.delta(of: m, original: original, adapter: adapter, base: base)
            let total = delta.reduce(0.0) { $0 + Double($1) * Double($1) }
            guard total > 0 else {
                report.skipped.append((m.module, 0))
                continue
            }
            let f = try ExtractSVD.factorize(delta, m: rows, n: cols, total: total, rule: options.rule, powerIterations: options.powerIterations)
            let r = f.report.rank
            let (aShape, bShape) = kernelShape.map { k in ([r] + k.dropFirst(), [rows, r] + Array(repeating: 1, count: k.count - 2)) } ?? ([r, cols], [rows, r])
            tensors.append(.init(name: "base_model.model.\(m.module).lora_A.weight", dtype: .float32, shape: aShape) { AdapterSink.floatBytes(f.a) })
            tensors.append(.init(name: "base_model.model.\(m.module).lora_B.weight", dtype: .float32, shape: bShape) { AdapterSink.floatBytes(f.b) })
            ranks.append((m.module, f.report.rank))
            report.modules.append(.init(module: m.module, rank: f.report.rank, energyKept: f.report.energy, relativeError: f.report.error, method: f.report.method))
        }
        guard !ranks.isEmpty else { throw LoRACoreError.invalidRequest("\(options.adapter): every module's ΔW is zero; nothing to convert") }
        let selected = Set(ranks.map(\.module))
        // Without the model, the full names: a suffix could also select modules the adapter never had.
        let config = AdapterSink.Config.unitScale(
            ranks: ranks,
            targetModules: base.map { b in TargetSelector.minimalSuffixes(selecting: selected, among: Set(b.names.map { TensorName($0).module })) }
                ?? selected.sorted(by: utf8Precedes))
        try AdapterSink.write(tensors.sorted { utf8Precedes($0.name, $1.name) }, config: config, to: options.output, force: options.force, zstdLevel: options.zstdLevel)
        return report
    }

    /// ΔW of one module in fp32 (rows × cols of the weight's flat view), as merge computes it.
    static func delta(of m: AdapterModule, original: AdapterModule, adapter: Adapter, base: Checkpoint?) throws -> (delta: [Float], rows: Int, cols: Int) {
        if m.transposed {
            throw LoRACoreError.invalidModule(module: m.module, detail: "Conv1D (fan_in_fan_out) modules are not converted to LoRA yet")
        }
        guard let u = m.update else {
            if m.isDoRA { throw LoRACoreError.invalidModule(module: m.module, detail: "DoRA rescales the merged weight: its change is not B·A") }
            let f = try LoRAFactors(original, adapter: adapter, weight: 1).renamed(m.module)
            var delta = [Float](repeating: 0, count: m.outFeatures * m.inFeatures)
            try f.apply(to: &delta, using: try Kernels.instructionSet())
            return (delta, m.outFeatures, m.inFeatures)
        }
        if u.tokenIndices != nil {
            throw LoRACoreError.invalidModule(module: m.module, detail: "trainable tokens replace embedding rows: not a change of low rank")
        }
        guard m.outFeatures > 0, m.inFeatures > 0 else {
            throw LoRACoreError.invalidRequest("module '\(m.module)': \(u.typeName) takes the weight's shape from the model; give --base")
        }
        let rows = m.outFeatures, cols = m.inFeatures
        try MemoryBudget.check(elements: rows * cols, bytesPerElement: 8, what: "module '\(m.module)': its \(rows)×\(cols) ΔW")
        let loaded = try u.load(m, from: adapter.checkpoint)
        if u.scalesBias, let base, base.info(m.baseBiasName) != nil {
            throw LoRACoreError.invalidModule(module: m.module, detail: "\(u.typeName) also scales its bias ('\(m.baseBiasName)'), which plain LoRA cannot hold")
        }
        if u.isMultiplicative || u.lycorisDoRA != nil {
            guard let base else {
                throw LoRACoreError.invalidRequest("module '\(m.module)': \(u.typeName)\(u.lycorisDoRA != nil ? " with LyCORIS DoRA rescales" : " multiplies") the weight, so its ΔW needs the weight: give --base")
            }
            let w = try TensorData.floats(base, m.baseWeightName)
            var merged = w
            loaded.apply(toRows: 0, count: rows, cols: cols, block: &merged, weight: 1)
            return (zip(merged, w).map { $0 - $1 }, rows, cols)
        }
        var delta = [Float](repeating: 0, count: rows * cols)
        loaded.apply(toRows: 0, count: rows, cols: cols, block: &delta, weight: 1)
        return (delta, rows, cols)
    }
}
