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
/// LyCORIS DoRA (`dora_scale`) is read by LoHa, LoKr and LoCon (`WeightDecompose`); LoCon modules
/// (`lora_down`/`lora_up`, `LoCon`) are read here, in a file with LoHa/LoKr modules or DoRA (a plain
/// kohya file is `KohyaDialect`'s; LoCon's Tucker core `lora_mid` makes it LyCORIS). Refused by name: every other LyCORIS algorithm (`diff`, `oft_blocks`, IA³ `weight`/`on_input`, …).
enum LycorisDialect: AdapterDialect {
    static let format = Adapter.Format.lycoris

    static func claims(tensorNames: [String]) -> Bool {
        tensorNames.contains { name in role(of: name).map { AdapterUpdateTypes.isRole($0) || $0 == "lora_mid.weight" } ?? false }
    }

    static func detects(_ files: AdapterFiles) -> Bool { files.config == nil && claims(tensorNames: files.checkpoint.names) }

    static func read(_ files: AdapterFiles, scale: AdapterScaleOverride) throws -> AdapterLayout {
        let ckpt = files.checkpoint
        let origin = { (module: String) throws -> UpdateOrigin in
            .lycoris(alpha: try ckpt.names.contains(module + ".alpha") ? KohyaDialect.readAlpha(ckpt, module + ".alpha", module: module) : nil)
        }
        // LoCon modules (lora_down/lora_up, with their dora_scale) are read apart: LoCon is not a registered type.
        let loConRoles: Set<String> = ["lora_down.weight", "lora_up.weight", "lora_mid.weight"]
        let loConModules = Set(ckpt.names.filter { role(of: $0).map(loConRoles.contains) ?? false }.map { String($0.prefix { $0 != "." }) })
        var (modules, _, rest) = try UpdatePairing.pair(
            ckpt,
            split: { name in
                let module = String(name.prefix { $0 != "." })
                return loConModules.contains(module) ? nil : role(of: name).map { (module, $0) }
            },
            origin: origin)
        var loCon: [String: [String: TensorInfo]] = [:]
        for name in rest {
            let module = String(name.prefix { $0 != "." })
            guard loConModules.contains(module), let r = role(of: name), loConRoles.contains(r) || r == "dora_scale" else { continue }
            loCon[module, default: [:]][r] = ckpt.info(name)!
        }
        for module in loCon.keys.sorted(by: utf8Precedes) {
            modules.append(try LoCon.module(module, tensors: loCon[module]!, origin: try origin(module)))
        }
        modules.sort { utf8Precedes($0.module, $1.module) }
        let held = Set(modules.map(\.module))
        for name in rest where !(loCon[String(name.prefix { $0 != "." })]?.values.contains { $0.name == name } ?? false) {
            let module = String(name.prefix { $0 != "." })
            if role(of: name) == "alpha" && held.contains(module) { continue }
            throw LoRACoreError.unsupportedAdapter(
                path: files.weights, detail: "tensor '\(name)': not a LoHa, LoKr or LoCon tensor (other LyCORIS algorithms are not supported yet)")
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
