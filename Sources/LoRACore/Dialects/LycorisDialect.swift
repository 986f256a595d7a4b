import LoRAGraph
import SafeTensors

/// LyCORIS files (lycoris-lora, and sd-scripts/ComfyUI files made with it): kohya-style module
/// names (`lora_unet_…`, `lora_te_…`, resolved against the base as `KohyaDialect.resolve` does)
/// with a registered type's tensors and a scalar `alpha` per module.
///
/// Example: `lora_te_model_layers_0_self_attn_q_proj.hada_w1_a` … `.hada_w2_b` + `.alpha` is a
/// LoHa on `model.layers.0.self_attn.q_proj`. Each type applies LyCORIS' own scale rule (`UpdateOrigin.lycoris`).
/// The merge is the network's forward pass, W + ΔW, not lycoris' `merge_to`, which multiplies ΔW
/// by alpha/r a second time (measured on the fixtures: ‖merge_to ΔW‖ / ‖forward ΔW‖ = alpha/r).
/// LyCORIS DoRA (`dora_scale`) is read by LoHa and LoKr (`WeightDecompose`). Refused by name: LoRA/LoCon
/// modules (`lora_down`, with or without `dora_scale`) in the same file, and every other LyCORIS algorithm (`diff`, `oft_blocks`, IA³ `weight`/`on_input`, …).
enum LycorisDialect: AdapterDialect {
    static let format = Adapter.Format.lycoris

    static func claims(tensorNames: [String]) -> Bool {
        tensorNames.contains { name in role(of: name).map(AdapterUpdateTypes.isRole) ?? false }
    }

    static func detects(_ files: AdapterFiles) -> Bool { files.config == nil && claims(tensorNames: files.checkpoint.names) }

    static func read(_ files: AdapterFiles, scale: AdapterScaleOverride) throws -> AdapterLayout {
        let ckpt = files.checkpoint
        let (modules, _, rest) = try UpdatePairing.pair(
            ckpt,
            split: { name in role(of: name).map { (String(name.prefix { $0 != "." }), $0) } },
            origin: { module in
                .lycoris(alpha: try ckpt.names.contains(module + ".alpha") ? KohyaDialect.readAlpha(ckpt, module + ".alpha", module: module) : nil)
            })
        let held = Set(modules.map(\.module))
        for name in rest {
            let module = String(name.prefix { $0 != "." })
            if role(of: name) == "alpha" && held.contains(module) { continue }
            let why: String
            switch role(of: name) {
            case "lora_down.weight", "lora_up.weight", "lora_mid.weight": why = "a LoRA/LoCon module in a LyCORIS file; merge it as its own kohya file"
            default: why = "not a LoHa or LoKr tensor (other LyCORIS algorithms are not supported yet)"
            }
            throw LoRACoreError.unsupportedAdapter(path: files.weights, detail: "tensor '\(name)': \(why)")
        }
        return AdapterLayout(modules: modules)
    }

    /// `hada_w1_a` for `lora_te_…_q_proj.hada_w1_a`: what follows the module name's first dot.
    private static func role(of name: String) -> String? {
        guard let dot = name.firstIndex(of: ".") else { return nil }
        return String(name[name.index(after: dot)...])
    }

    static func name(of adapter: Adapter) -> String {
        let types = Array(Set(adapter.modules.map(\.typeName))).sorted()
        return "LyCORIS \(types.joined(separator: " + ")) (kohya names)"
    }

    static func scaleRule(of adapter: Adapter) -> String {
        "alpha/r per module (no alpha: 1); LoKr with both halves full: 1"
    }

    static func write(_ factors: [LoRAFactors], adapter: Adapter, base: Checkpoint?, options: ConvertOptions, notes: inout [String]) throws {
        throw LoRACoreError.unsupportedAdapter(path: options.output, detail: "writing LyCORIS files is not supported")
    }
}
