import LoRAGraph
import SafeTensors

/// `convert --initial`: an adapter trained on PEFT's residual model (PiSSA, OLoRA, CorDA, LoRA-GA)
/// rewritten as a LoRA of the original model, from the adapter PEFT saved at initialisation — what
/// PEFT's `save_pretrained(path_initial_model_for_weight_conversion=…)` writes: per module
/// A' = [A; A₀], B' = [B, −B₀] at the same scale (so r and α double), ΔW = s·(BA − B₀A₀).
///
/// Where PEFT's conversion loses data, this one does not: it keeps embedding LoRA
/// (`lora_embedding_A/B`, which PEFT's `"lora_A" in name` test drops, so the converted adapter
/// silently loses the embedding's trained update), DoRA magnitudes, biases and saved base layers, and
/// with rsLoRA and rank or alpha patterns it writes each module's scale exactly (PEFT refuses).
enum ResidualConversion {
    /// The trained `factors` (already resolved and read by `Convert`) minus their initial values.
    /// - Throws: `LoRACoreError.invalidRequest` when the adapter was not trained on a residual model;
    ///   `.unsupportedAdapter` for LoftQ (its residual is not W − s·B₀A₀), and naming the module whose
    ///   initial factors are missing, extra or of another shape or scale, or a saved base layer that
    ///   holds residual weights.
    static func factors(_ factors: [LoRAFactors], adapter: Adapter, initialPath: String, notes: inout [String]) throws -> [LoRAFactors] {
        guard let method = adapter.config.residualInitialisation else {
            throw LoRACoreError.invalidRequest(
                "--initial converts an adapter initialised by PiSSA, OLoRA, CorDA or LoRA-GA (init_lora_weights); \(adapter.path) has init_lora_weights \(adapter.config.initLoraWeights.map { "'\($0)'" } ?? "true"), so it already is a LoRA of its base")
        }
        guard method.convertsToLoRA else {
            throw LoRACoreError.unsupportedAdapter(
                path: adapter.path, detail: "init_lora_weights 'loftq': \(method.conversion); merge it into its LoftQ base with --residual-base")
        }
        let initial = try Adapter(path: initialPath)
        guard initial.format == .peft, initial.config.peftType == .lora else {
            throw LoRACoreError.unsupportedAdapter(path: initial.path, detail: "the initial adapter must be the PEFT LoRA saved at initialisation (this is \(initial.dialect))")
        }
        var ignored: [String] = []
        var start: [String: LoRAFactors] = [:]
        for f in try Convert.factors(of: initial, modules: initial.modules, notes: &ignored) { start[f.module.module] = f }
        let trained = Set(factors.map(\.module.module))
        if let extra = start.keys.filter({ !trained.contains($0) }).sorted(by: utf8Precedes).first {
            throw LoRACoreError.unsupportedAdapter(path: initial.path, detail: "module '\(extra)' has initial factors but no trained ones in \(adapter.path): not the same adapter")
        }
        for (base, _) in adapter.replacements {
            let module = TensorName(base).module
            if let f = factors.first(where: { $0.module.module == module }), f.module.kind != .embedding {
                throw LoRACoreError.unsupportedAdapter(
                    path: adapter.path, detail: "'\(base)' is the saved \(method.name) residual of module '\(module)', not its original weights: the converted adapter would replace them with the residual")
            }
        }
        let converted = try factors.map { f -> LoRAFactors in
            let m = f.module
            guard let f0 = start[m.module] else {
                throw LoRACoreError.unsupportedAdapter(path: initial.path, detail: "module '\(m.module)' has no initial factors: not the adapter saved at initialisation of \(adapter.path)")
            }
            let m0 = f0.module
            guard m0.kind == m.kind, m0.inFeatures == m.inFeatures, m0.outFeatures == m.outFeatures, m0.transposed == m.transposed, m0.convShape == m.convShape else {
                throw LoRACoreError.unsupportedAdapter(path: initial.path, detail: "module '\(m.module)': initial factors of another shape than the trained ones")
            }
            guard m0.scale == m.scale else {
                throw LoRACoreError.unsupportedAdapter(
                    path: initial.path, detail: "module '\(m.module)': initial scale \(m0.scale), trained scale \(m.scale); the adapter saved at initialisation has the trained adapter's r and alpha")
            }
            if let bias = f0.bias, bias.contains(where: { $0 != 0 }) {
                throw LoRACoreError.unsupportedAdapter(path: initial.path, detail: "module '\(m.module)': a nonzero lora_B.bias at initialisation")
            }
            return f.subtracting(initial: f0)
        }
        notes.append("\(method.name) adapter converted for the original model: A' = [A; A₀], B' = [B, −B₀] per module (rank doubled), the factors at initialisation from \(initial.path)")
        return converted
    }
}
