import Foundation
import LoRAGraph
import SafeTensors

/// Options of `convert`: rewrite an adapter in another dialect.
public struct ConvertOptions: Sendable {
    public var adapter: String
    public var to: Adapter.Format
    public var output: String
    /// Needed to read kohya names back into module paths, and for exact PEFT target_modules.
    public var base: String?
    public var force = false
    public var zstdLevel: Int32?
    /// Scale for adapters that store none (hand-written layouts).
    public var scaleOverride = AdapterScaleOverride()
    /// For an adapter trained on PEFT's residual model (PiSSA, OLoRA, CorDA, LoRA-GA): the adapter
    /// saved at initialisation, so that the output is a LoRA of the original model (`ResidualConversion`).
    public var initial: String?

    public init(adapter: String, to: Adapter.Format, output: String) {
        self.adapter = adapter
        self.to = to
        self.output = output
    }
}

/// What `convert` wrote.
public struct ConvertReport: Sendable {
    public var from: String
    public var to: String
    public var modules: Int
    /// Per-module scale in the output convention, for the report.
    public var scales: [Double]
    public var notes: [String]
}

/// `convert`: the same ΔW = s·B·A per module, written in PEFT, kohya or mlx form.
///
/// Scale translation is exact: PEFT gets α = s·r per module (lora_alpha for the most common,
/// alpha_pattern for the rest; rsLoRA and AdaLoRA become plain LoRA with A ⊙ E folded in); kohya gets
/// a scalar `alpha` = s·r per module; mlx gets one global `scale` (when modules differ, B is
/// pre-multiplied by sᵢ/s, one fp32 rounding, reported). Factors are written as F32, holding the
/// decoded values exactly. What a dialect cannot express is refused with the reason.
public enum Convert {
    public static func run(_ options: ConvertOptions) throws -> ConvertReport {
        try PathSafety.checkOutput(options.output, inputs: [options.adapter] + [options.base, options.initial].compactMap { $0 })
        let adapter = try Adapter(path: options.adapter, scale: options.scaleOverride)
        try adapter.refuseParameterTargets("convert")
        // Image-model LoRAs: diffusers → kohya (SD 1.x/2.x names; SDXL's sgm names with the pipeline as --base) and → diffusers, kohya/LyCORIS → diffusers
        // with the pipeline as --base keep every name and α; other conversions are not written yet.
        let pipeline = try options.base.flatMap { DiffusersPipeline.isPipeline($0) ? try DiffusersPipeline(path: $0) : nil }
        // A component folder (unet/, transformer/) as --base resolves the kohya names of that component alone.
        let component = options.base.flatMap { pipeline == nil ? DiffusersComponent.name(ofDirectory: $0) : nil }
        if !((adapter.format == .diffusers && (options.to == .kohya || options.to == .diffusers))
            || ((pipeline != nil || component != nil) && options.to == .diffusers && DiffusersComponent.namesComponents(adapter))) {
            try adapter.refuseImageModel("convert")
        }
        if options.initial == nil { try ResidualInitialisation.refuse(adapter, "convert") }
        let base = try options.base.flatMap { pipeline == nil ? try Checkpoint(path: $0) : nil }
        var modules = adapter.modules
        if let pipeline {
            // An SDXL diffusers-format LoRA --to kohya reads the pipeline's UNet layout for its sgm names.
            guard options.to == .diffusers || (options.to == .kohya && adapter.format == .diffusers) else {
                throw LoRACoreError.invalidRequest("a diffusers pipeline as --base applies to --to diffusers (and to --to kohya of a diffusers-format LoRA)")
            }
            if adapter.format != .diffusers { modules = try DiffusersComponent.pipelineModules(of: adapter, pipeline: pipeline) }
        } else if let component, let base, options.to == .diffusers, DiffusersComponent.namesComponents(adapter), adapter.format != .diffusers {
            modules = try DiffusersComponent.folderModules(of: adapter, component: component, base: base, path: options.base!)
        } else if let base { modules = try adapter.modules(resolvedAgainst: base) } else if (adapter.format == .kohya || adapter.format == .lycoris) && options.to != .kohya {
            throw LoRACoreError.invalidRequest("kohya names flatten module paths; give --base so they can be matched to the model's modules")
        }
        guard !modules.isEmpty else { throw LoRACoreError.invalidRequest("\(options.adapter): no LoRA modules to convert") }
        if modules.contains(where: { $0.update != nil }) {
            guard modules.count == adapter.modules.count else {
                throw LoRACoreError.unsupportedAdapter(path: adapter.path, detail: "LyCORIS updates together with split fused Flux modules: convert does not take this mix")
            }
            return try ConvertLycoris.run(adapter: adapter, modules: modules, base: base, options: options)
        }
        var notes: [String] = []
        var factors = try Convert.factors(of: adapter, modules: modules, notes: &notes)
        if let initial = options.initial {
            factors = try ResidualConversion.factors(factors, adapter: adapter, initialPath: initial, notes: &notes)
        }
        if adapter.config.useRslora && adapter.format == .peft { notes.append("rsLoRA scales written as plain α/r with α = s·r") }
        if adapter.config.peftType == .adalora { notes.append("AdaLoRA written as plain LoRA: A ⊙ E folded into A, α = s·r") }

        try AdapterDialects.dialect(for: options.to).write(factors, adapter: adapter, base: base, options: options, notes: &notes)
        return ConvertReport(from: adapter.dialect, to: options.to.rawValue, modules: factors.count,
                             scales: Array(Set(factors.map(\.module.scale))).sorted(), notes: notes)
    }

    /// Each module's fp32 factors (scale in the module), read under the adapter's own names and
    /// carrying the resolved `modules`' names; SoRA gates folded into A and zero-gate ranks dropped
    /// (noted).
    static func factors(of adapter: Adapter, modules: [AdapterModule], notes: inout [String]) throws -> [LoRAFactors] {
        var factors: [LoRAFactors] = []
        if adapter.modules.contains(where: \.isGated) { notes.append("SoRA gates folded into A (A ← diag(g)·A)") }
        for m in modules {
            // A resolved module keeps the adapter's tensor names (and a fused module's part its rows of B).
            var f = try LoRAFactors(m, adapter: adapter, weight: 1)
            if m.isGated, let gate = m.eName {
                let before = f.module.rank
                f = f.droppingZeroRanks(gate: try TensorData.floats(adapter.checkpoint, gate))
                if f.module.rank < before {
                    notes.append("\(m.module): \(before - f.module.rank) rank(s) with a zero SoRA gate dropped (rank \(before) → \(f.module.rank))")
                }
            }
            factors.append(f)
        }
        return factors
    }

    /// kohya, diffusers and mlx hold only linear LoRA factors (mlx also DoRA magnitudes; the diffusers
    /// writer does not write them yet).
    static func refuse(_ factors: [LoRAFactors], adapter: Adapter, into target: String) throws {
        if let f = factors.first(where: { $0.module.kind == .embedding }) {
            throw LoRACoreError.unsupportedAdapter(path: adapter.path, detail: "\(target) cannot express embedding LoRA ('\(f.module.module)')")
        }
        if target.hasPrefix("mlx"), let f = factors.first(where: { $0.module.convShape != nil }) {
            throw LoRACoreError.unsupportedAdapter(path: adapter.path, detail: "\(target) cannot express convolution LoRA ('\(f.module.module)')")
        }
        if let f = factors.first(where: { $0.module.transposed }) {
            throw LoRACoreError.unsupportedAdapter(path: adapter.path, detail: "\(target) cannot express fan_in_fan_out (Conv1D) modules ('\(f.module.module)')")
        }
        if target.hasPrefix("kohya") || target.hasPrefix("diffusers"), let f = factors.first(where: { $0.magnitude != nil }) {
            throw LoRACoreError.unsupportedAdapter(path: adapter.path, detail: "\(target) cannot express DoRA magnitudes ('\(f.module.module)')")
        }
        if let f = factors.first(where: { $0.bias != nil }) {
            throw LoRACoreError.unsupportedAdapter(path: adapter.path, detail: "\(target) cannot express lora_B.bias ('\(f.module.module)')")
        }
        if let r = adapter.replacements.first {
            throw LoRACoreError.unsupportedAdapter(path: adapter.path, detail: "\(target) cannot hold full replacement tensors ('\(r.base)', modules_to_save)")
        }
    }

    static func mostCommon(_ values: [Double]) -> Double {
        var counts: [Double: Int] = [:]
        for v in values { counts[v, default: 0] += 1 }
        return counts.max { $0.value != $1.value ? $0.value < $1.value : $0.key > $1.key }?.key ?? 1
    }
}
