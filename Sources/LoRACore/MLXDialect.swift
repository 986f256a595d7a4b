import LoRAGraph
import SafeTensors

/// mlx-lm adapters: `adapters.safetensors` + `adapter_config.json` with
/// `{"fine_tune_type": "lora"|"dora", "lora_parameters": {"rank": r, "scale": s, "keys": [...]}}`.
///
/// Keys: `<module>.lora_a` (in×r) and `<module>.lora_b` (r×out), the transposes of PEFT's A and B;
/// DoRA adds `<module>.m` (out). ΔW = s·(lora_a·lora_b)ᵀ = s·B·A with s used directly (no α/r).
enum MLXDialect {
    struct Config {
        var rank: Int
        var scale: Double
        var dora: Bool

        init(json: JSONValue, file: String) throws {
            guard let p = json["lora_parameters"], p.objectMembers != nil else {
                throw LoRACoreError.invalidConfig(file: file, detail: "missing 'lora_parameters'")
            }
            guard let r = p["rank"]?.intValue, r > 0 else {
                throw LoRACoreError.invalidConfig(file: file, detail: "'lora_parameters.rank' must be a positive integer")
            }
            guard let s = p["scale"]?.doubleValue ?? Optional(20.0), s.isFinite else {
                throw LoRACoreError.invalidConfig(file: file, detail: "'lora_parameters.scale' must be a finite number")
            }
            if let v = p["scale"], v.doubleValue == nil {
                throw LoRACoreError.invalidConfig(file: file, detail: "'lora_parameters.scale' is \(v.typeName), expected a number")
            }
            let type = json["fine_tune_type"]?.stringValue ?? "lora"
            guard type == "lora" || type == "dora" else {
                throw LoRACoreError.unsupportedAdapter(path: file, detail: "fine_tune_type '\(type)' is not a LoRA adapter")
            }
            rank = r
            scale = s
            dora = type == "dora"
        }
    }

    static func pair(_ ckpt: Checkpoint, config: Config, file: String) throws -> ([AdapterModule], [(base: String, tensor: String)], [String]) {
        var groups: [String: [String: String]] = [:]
        for name in ckpt.names {
            guard let dot = name.lastIndex(of: ".") else { continue }
            let module = String(name[..<dot]), leaf = String(name[name.index(after: dot)...])
            guard ["lora_a", "lora_b", "m"].contains(leaf) else {
                throw LoRACoreError.unsupportedAdapter(path: file, detail: "tensor '\(name)' is not an mlx LoRA tensor (lora_a, lora_b, m)")
            }
            groups[module, default: [:]][leaf] = name
        }
        var modules: [AdapterModule] = []
        for module in groups.keys.sorted(by: utf8Precedes) {
            let g = groups[module]!
            guard let aName = g["lora_a"], let bName = g["lora_b"] else {
                throw LoRACoreError.invalidModule(module: module, detail: "needs both lora_a and lora_b")
            }
            let a = ckpt.info(aName)!, b = ckpt.info(bName)!
            guard a.shape.count == 2, b.shape.count == 2, a.shape[1] == b.shape[0] else {
                throw LoRACoreError.invalidModule(module: module, detail: "lora_a \(a.shape) and lora_b \(b.shape) do not chain (in×r, r×out)")
            }
            let rank = a.shape[1]
            guard rank == config.rank else {
                throw LoRACoreError.invalidModule(module: module, detail: "tensors have rank \(rank) but adapter_config.json gives rank \(config.rank)")
            }
            guard rank > 0, rank <= min(a.shape[0], b.shape[1]) else {
                throw LoRACoreError.invalidModule(module: module, detail: "rank \(rank) does not fit the matrix \(b.shape[1])×\(a.shape[0])")
            }
            var m = AdapterModule(
                module: module, kind: .linear, aName: aName, bName: bName, eName: nil, bBiasName: nil,
                magnitudeName: config.dora ? g["m"] : nil, rank: rank, alpha: config.scale * Double(rank), scale: config.scale,
                outFeatures: b.shape[1], inFeatures: a.shape[0], transposed: false)
            m.factorsTransposed = true
            modules.append(m)
        }
        return (modules, [], [])
    }
}
