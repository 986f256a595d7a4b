/// A tensor name parsed into module path and role.
///
/// Examples (PEFT; the `base_model.model.` prefix and adapter names are stripped):
/// - `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight` → module
///   `model.layers.3.self_attn.q_proj`, role `.lora(.A)`, layer 3 under `layers`
/// - `model.layers.0.mlp.up_proj.lora_B.default.weight` → adapter name `default`
/// - `model.layers.0.self_attn.v_proj.lora_magnitude_vector` → `.lora(.magnitude)` (no `.weight` on disk)
/// - `model.layers.0.self_attn.q_proj.base_layer.weight` → `.baseLayer(parameter: "weight")`
/// - `lm_head.modules_to_save.default.weight` → module `lm_head`, `.modulesToSave(parameter: "weight")`
/// - `lora_unet_down_blocks_0_attn.lora_down.weight` → kohya, module `lora_unet_down_blocks_0_attn`
/// - `encoder.layer.0.attention.self.query.lora.lora_A` / `.lora.gate` → SoRA (OpenDelta), module
///   `encoder.layer.0.attention.self.query`, roles `.lora(.A)` / `.lora(.gate)`; `X.lora_gate` too
public struct TensorName: Sendable, Hashable {
    /// The name as stored.
    public let original: String
    /// Module path with wrappers removed (`model.layers.3.self_attn.q_proj`); empty for a top-level parameter.
    public let module: String
    public let role: TensorRole
    /// Adapter name infix (`default`) when the name carries one.
    public let adapterName: String?
    /// Whether the `base_model.model.` (or `base_model.`) prefix was present.
    public let hadPEFTPrefix: Bool
    /// First `.<pattern>.<index>.` in the module path: the layer index and the segment before it.
    public let layer: (pattern: String, index: Int)?

    public static func == (l: TensorName, r: TensorName) -> Bool { l.original == r.original }
    public func hash(into h: inout Hasher) { h.combine(original) }

    /// The last segment of the module path (`q_proj`), or the whole module for kohya names.
    public var family: String { module.split(separator: ".").last.map(String.init) ?? module }

    /// The name of the base tensor this refers to: module + parameter (`...q_proj.weight`), or nil for LoRA tensors.
    public var baseTensorName: String? {
        guard let p = role.baseParameter else { return nil }
        return module.isEmpty ? p : module + "." + p
    }

    /// Parses `name`. Never fails: anything unrecognised is a plain parameter.
    public init(_ name: String) {
        original = name
        var segments = name.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        var prefixed = false
        if segments.count > 2, segments[0] == "base_model", segments[1] == "model" {
            segments.removeFirst(2)
            prefixed = true
        }
        hadPEFTPrefix = prefixed
        var adapter: String?
        var role: TensorRole
        var moduleSegments: [String]
        // SoRA as OpenDelta saves it: a parallel `lora` submodule holding lora_A, lora_B and `gate`.
        if segments.count > 2, segments[segments.count - 2] == "lora", segments.last == "gate" {
            segments[segments.count - 1] = "lora_gate"
        }
        if let i = segments.firstIndex(where: { s in LoRAParameter.allCases.contains { $0.segment == s } }), i > 0 {
            moduleSegments = Array(segments[..<i])
            if moduleSegments.count > 1, moduleSegments.last == "lora" { moduleSegments.removeLast() }
            var rest = Array(segments[(i + 1)...])
            var param = LoRAParameter.allCases.first { $0.segment == segments[i] }!
            var trailing: String?
            if let last = rest.last, last == "weight" || last == "bias" {
                trailing = last
                rest.removeLast()
            }
            if rest.count == 1 { adapter = rest[0] }
            if param == .B && trailing == "bias" { param = .bBias }
            role = .lora(param)
            if rest.count > 1 {
                role = .parameter(segments.last ?? "")
                moduleSegments = Array(segments.dropLast())
                adapter = nil
            }
        } else if segments.count == 2, segments[1] == "alpha", segments[0].hasPrefix("lora_") {
            moduleSegments = [segments[0]]
            role = .kohyaAlpha
        } else if let i = segments.firstIndex(of: "base_layer"), i > 0, i == segments.count - 2 {
            moduleSegments = Array(segments[..<i])
            role = .baseLayer(parameter: segments[i + 1])
        } else if let i = segments.firstIndex(of: "modules_to_save"), i > 0, i == segments.count - 3 {
            moduleSegments = Array(segments[..<i])
            adapter = segments[i + 1]
            role = .modulesToSave(parameter: segments[i + 2])
        } else if let i = segments.firstIndex(of: "original_module"), i > 0, i == segments.count - 2 {
            moduleSegments = Array(segments[..<i])
            role = .originalModule(parameter: segments[i + 1])
        } else {
            moduleSegments = Array(segments.dropLast())
            role = .parameter(segments.last ?? "")
        }
        self.role = role
        adapterName = adapter
        module = moduleSegments.joined(separator: ".")
        var found: (String, Int)?
        for j in moduleSegments.indices.dropFirst() {
            if let n = Int(moduleSegments[j]), n >= 0, moduleSegments[j].allSatisfy(\.isASCII) {
                found = (moduleSegments[j - 1], n)
                break
            }
        }
        layer = found
    }
}
