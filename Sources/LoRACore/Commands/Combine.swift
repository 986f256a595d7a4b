import Foundation
import LoRAGraph
import SafeTensors

/// `combine`: several LoRA adapters into one adapter, from the adapter files alone (no base model
/// in memory), by the methods of PEFT 0.21.2's `add_weighted_adapter` (`CombineMethod`).
///
/// Inputs may be of any dialect and rank (PEFT LoRA, rsLoRA, AdaLoRA, SoRA, kohya with `base`,
/// mlx); each module's scale sᵢ comes from its own adapter (rsLoRA, alpha/rank patterns), and a
/// module missing from some inputs combines with their ΔW = 0. Where PEFT is wrong, the mathematics
/// (Σ wᵢ·ΔWᵢ) wins: the new adapter is plain LoRA with scale 1 per module (α = r), whatever the first
/// input's `use_rslora` (PEFT copies it, making the delta √r too large), and `lora_B.bias` becomes
/// Σ wᵢ·sᵢ·bᵢ (PEFT leaves it zero). DoRA modules combine only when every input holding the module
/// is DoRA there with one shared magnitude vector (the combined adapter keeps it: W' = m ⊙ (W + ΣΔW)
/// / ‖W + ΣΔW‖ per row); otherwise they, and full replacement tensors, are refused with the reason.
public enum Combine {
    /// - Throws: `LoRACoreError` for bad options, inputs that cannot be combined (DoRA,
    ///   modules_to_save, shapes that disagree) or that the output dialect cannot express;
    ///   `SafeTensorsError` for unreadable or unwritable files.
    public static func run(_ options: CombineOptions) throws -> CombineReport {
        try check(options)
        try PathSafety.checkOutput(options.output, inputs: options.adapters.map(\.path) + (options.base.map { [$0] } ?? []))
        let adapters = try options.adapters.map { try Adapter(path: $0.path) }
        // Image-model LoRAs are written in their own format under their own names (`ImageModelCombine`).
        let imageFormat = adapters.contains(where: \.isImageModelLoRA) ? try ImageModelCombine.format(of: adapters, options: options) : nil
        let to = imageFormat ?? options.to ?? .peft
        let base = try options.base.map { try Checkpoint(path: $0) }
        var notes: [String] = []
        var method = options.method
        if adapters.count == 1 && method != .linear {
            notes.append("one input: combined as linear, as PEFT's add_weighted_adapter does")
            method = .linear
        }
        // Module name → (input index, module as stored, module as named in the output).
        var byModule: [String: [(input: Int, stored: AdapterModule, named: AdapterModule)]] = [:]
        for (i, adapter) in adapters.enumerated() {
            try refuseUncombinable(adapter)
            try adapter.refuseParameterTargets("combine")
            try ResidualInitialisation.refuse(adapter, "combine")
            let named: [AdapterModule]
            if let base {
                named = try adapter.modules(resolvedAgainst: base)
            } else if adapter.format == .kohya && !(to == .kohya && adapters.allSatisfy { $0.format == .kohya }) {
                throw LoRACoreError.invalidRequest("\(adapter.path): kohya names flatten module paths; give --base so they can be matched to the other inputs' modules")
            } else {
                named = adapter.modules
            }
            for (stored, n) in zip(adapter.modules, named) { byModule[n.module, default: []].append((i, stored, n)) }
        }
        let rule = options.rule ?? .fixed(defaultRank(adapters))
        var factors: [LoRAFactors] = []
        var report: [CombineReport.Module] = []
        for name in byModule.keys.sorted(by: utf8Precedes) {
            if let targets = options.targets, !targets.matches(name) { continue }
            let entries = byModule[name]!
            let parts = try entries.map {
                CombinePart(factors: try LoRAFactors($0.stored, adapter: adapters[$0.input], weight: options.adapters[$0.input].weight)
                    .renamed(name), weight: options.adapters[$0.input].weight, index: $0.input)
            }
            try checkShapes(parts, module: name)
            let context = CombineContext(module: name, rule: rule, density: options.density ?? 1, majoritySign: options.majoritySign,
                                         seed: options.seed)
            let combined = try method.combiner.combine(parts, context: context)
            let sumOfRanks = parts.reduce(0) { $0 + $1.module.rank }
            if method == .cat && combined.rank < sumOfRanks {
                notes.append("\(name): ranks add up to \(sumOfRanks) > min(out, in); written at rank \(combined.rank) by an SVD keeping every direction")
            }
            let bias = biasChange(parts)
            let magnitude = try sharedMagnitude(parts, module: name, adapters: adapters)
            factors.append(.combined(parts[0].module, rank: combined.rank, a: combined.a, b: combined.b, bias: bias, magnitude: magnitude))
            report.append(.init(module: name, inputs: parts.count, rank: combined.rank, energyKept: combined.energyKept,
                                relativeError: combined.relativeError, bias: bias != nil))
        }
        guard !factors.isEmpty else { throw LoRACoreError.invalidRequest("no LoRA modules to combine (check --targets)") }
        if adapters.contains(where: { $0.config.useRslora }) {
            notes.append("rsLoRA inputs scaled by α/√r each; the output is plain LoRA with scale 1 (α = r)")
        }
        if factors.contains(where: { $0.bias != nil }) { notes.append("lora_B.bias written as Σ wᵢ·sᵢ·bᵢ") }
        if factors.contains(where: { $0.magnitude != nil }) {
            notes.append("DoRA inputs share one magnitude vector per module: the combined adapter keeps it and rescales W + ΣΔW")
        }
        if let imageFormat {
            try ImageModelCombine.write(factors, format: imageFormat, source: adapters[0], options: options, notes: &notes)
        } else {
            var convert = ConvertOptions(adapter: options.adapters.map(\.path).joined(separator: " + "), to: to, output: options.output)
            convert.base = options.base
            convert.force = options.force
            convert.zstdLevel = options.zstdLevel
            try AdapterDialects.dialect(for: to).write(factors, adapter: adapters[0], base: base, options: convert, notes: &notes)
        }
        return CombineReport(method: method, to: to.rawValue, modules: report, seed: method.isRandom ? options.seed : nil, notes: notes)
    }

    /// The checks that need no file.
    static func check(_ options: CombineOptions) throws {
        guard !options.adapters.isEmpty else { throw LoRACoreError.invalidRequest("combine needs at least one --adapter") }
        guard options.adapters.allSatisfy({ $0.weight.isFinite }) else { throw LoRACoreError.invalidRequest("--weight must be finite") }
        let m = options.method
        if m.needsDensity {
            guard let d = options.density else { throw LoRACoreError.invalidRequest("--method \(m.rawValue) needs --density (fraction kept, 0…1)") }
            guard d >= 0 && d <= 1 else { throw LoRACoreError.invalidRequest("--density must be in [0, 1], got \(d)") }
        } else if options.density != nil {
            throw LoRACoreError.invalidRequest("--density applies to ties, dare_*, magnitude_prune and their _svd variants, not \(m.rawValue)")
        }
        if options.rule != nil && !m.truncates {
            throw LoRACoreError.invalidRequest("--rank and --energy apply to svd and the _svd methods, not \(m.rawValue)")
        }
        switch options.rule {
        case let .fixed(r)?: guard r > 0 else { throw LoRACoreError.invalidRequest("--rank must be positive, got \(r)") }
        case let .energy(p, _)?: guard p > 0 && p <= 1 else { throw LoRACoreError.invalidRequest("--energy must be in (0, 1], got \(p)") }
        case nil: break
        }
    }

    /// The magnitude vector of a DoRA module, when every input holding it is DoRA there with the same
    /// one (bit for bit); nil for plain LoRA modules.
    /// - Throws: `LoRACoreError.unsupportedAdapter` otherwise: DoRA's magnitude rescales ‖W + ΔW‖ row
    ///   by row, which depends on the base and does not add across adapters.
    static func sharedMagnitude(_ parts: [CombinePart], module: String, adapters: [Adapter]) throws -> [Float]? {
        let magnitudes = parts.map(\.factors.magnitude)
        guard let first = magnitudes.first(where: { $0 != nil }) ?? nil else { return nil }
        for (p, m) in zip(parts, magnitudes) where m.map({ $0.map(\.bitPattern) != first.map(\.bitPattern) }) ?? true {
            throw LoRACoreError.unsupportedAdapter(
                path: adapters[p.index].path,
                detail: "DoRA module '\(module)': " + (m == nil ? "plain LoRA here but DoRA in another input" : "its magnitude vector differs from another input's")
                    + "; DoRA's magnitude rescales ‖W + ΔW‖ row by row, which depends on the base and does not add across adapters, so only inputs sharing one magnitude vector combine; merge them into the base with `merge` instead")
        }
        return first
    }

    /// Full replacement tensors cannot be weighted.
    static func refuseUncombinable(_ adapter: Adapter) throws {
        if let r = adapter.replacements.first {
            throw LoRACoreError.unsupportedAdapter(
                path: adapter.path, detail: "holds a full replacement tensor for '\(r.base)' (modules_to_save / base_layer), which cannot be weighted or added")
        }
    }

    /// All inputs of a module must describe the same matrix.
    static func checkShapes(_ parts: [CombinePart], module: String) throws {
        let f = parts[0].module
        for p in parts.dropFirst() {
            let m = p.module
            guard m.outFeatures == f.outFeatures, m.inFeatures == f.inFeatures, m.kind == f.kind, m.transposed == f.transposed,
                  m.convShape == f.convShape else {
                throw LoRACoreError.invalidModule(
                    module: module,
                    detail: "inputs disagree on its shape: input \(parts[0].index + 1) has \(f.kind.rawValue) \(f.outFeatures)×\(f.inFeatures)\(f.transposed ? " (stored transposed)" : ""), input \(p.index + 1) has \(m.kind.rawValue) \(m.outFeatures)×\(m.inFeatures)\(m.transposed ? " (stored transposed)" : "")")
            }
        }
    }

    /// Σ wᵢ·sᵢ·bᵢ over the inputs with `lora_B.bias` (float64, rounded once), nil when none has one.
    static func biasChange(_ parts: [CombinePart]) -> [Float]? {
        guard parts.contains(where: { $0.factors.bias != nil }) else { return nil }
        var sum = [Double](repeating: 0, count: parts[0].module.outFeatures)
        for p in parts {
            guard let b = p.factors.bias else { continue }
            for o in sum.indices { sum[o] += p.coefficient * Double(b[o]) }
        }
        return sum.map(Float.init)
    }

    /// PEFT's default SVD rank: the largest rank among the inputs (for PEFT LoRA, max of r and the
    /// rank_pattern values; otherwise the largest module rank).
    static func defaultRank(_ adapters: [Adapter]) -> Int {
        adapters.map { a in
            let modules = a.modules.map(\.rank).max() ?? 1
            guard a.format == .peft && a.config.peftType == .lora else { return modules }
            return max(a.config.r, a.config.rankPattern.map(\.value).max() ?? 0, modules)
        }.max() ?? 1
    }
}
