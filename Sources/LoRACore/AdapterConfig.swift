import Foundation
import LoRAGraph
import SafeTensors

/// The fields of PEFT's `adapter_config.json` that decide the merge (`LoraConfig`).
///
/// Missing fields take PEFT's defaults (old configs lack newer fields). Types are checked: a wrong
/// type, a non-positive `r`, or a non-finite `lora_alpha` is an error, never a guess.
public struct AdapterConfig: Sendable, Equatable {
    public enum PEFTType: String, Sendable { case lora = "LORA", adalora = "ADALORA" }
    /// How `target_modules` was given.
    public enum Targets: Sendable, Equatable {
        case list([String])
        case regex(String)
        case none
    }

    public var peftType: PEFTType = .lora
    public var r: Int = 8
    public var loraAlpha: Double = 8
    public var useRslora = false
    public var useDora = false
    public var fanInFanOut = false
    public var loraBias = false
    /// `rank_pattern` in file order (PEFT uses the first key that matches).
    public var rankPattern: [(key: String, value: Int)] = []
    public var alphaPattern: [(key: String, value: Double)] = []
    public var targetModules: Targets = .none
    public var modulesToSave: [String] = []
    public var layersToTransform: [Int]?
    public var layersPattern: [String]?
    /// `init_r` (AdaLoRA).
    public var initR: Int?

    public static func == (l: AdapterConfig, r: AdapterConfig) -> Bool {
        l.peftType == r.peftType && l.r == r.r && l.loraAlpha == r.loraAlpha && l.useRslora == r.useRslora
            && l.useDora == r.useDora && l.fanInFanOut == r.fanInFanOut && l.targetModules == r.targetModules
            && l.rankPattern.map(\.key) == r.rankPattern.map(\.key) && l.rankPattern.map(\.value) == r.rankPattern.map(\.value)
            && l.alphaPattern.map(\.key) == r.alphaPattern.map(\.key) && l.alphaPattern.map(\.value) == r.alphaPattern.map(\.value)
            && l.modulesToSave == r.modulesToSave && l.layersToTransform == r.layersToTransform
            && l.layersPattern == r.layersPattern && l.loraBias == r.loraBias
    }

    public init() {}

    /// Parses adapter_config.json bytes.
    /// - Throws: `LoRACoreError.invalidConfig` (naming `file` and the field) or `.unsupportedAdapter`.
    public init(json bytes: [UInt8], file: String) throws {
        let root: JSONValue
        do { root = try JSONParser.parse(bytes) } catch {
            throw LoRACoreError.invalidConfig(file: file, detail: "not valid JSON: \(error.description)")
        }
        guard root.objectMembers != nil else { throw LoRACoreError.invalidConfig(file: file, detail: "not a JSON object") }
        func bad(_ field: String, _ expected: String, _ v: JSONValue) -> LoRACoreError {
            .invalidConfig(file: file, detail: "'\(field)' is \(v.typeName), expected \(expected)")
        }
        func present(_ key: String) -> JSONValue? {
            guard let v = root[key] else { return nil }
            if case .null = v { return nil }
            return v
        }
        func bool(_ key: String) throws -> Bool? {
            guard let v = present(key) else { return nil }
            guard let b = v.boolValue else { throw bad(key, "true or false", v) }
            return b
        }
        if present("peft_type") == nil, let rValue = present("lora_r") {
            // SoRA / OpenDelta's LoRA config: {"lora_r": r, "lora_alpha": α}; scale α/r as LoRA.
            guard let n = rValue.intValue, n > 0 else { throw bad("lora_r", "a positive integer", rValue) }
            r = n
            loraAlpha = Double(n)
            if let v = present("lora_alpha") {
                guard let a = v.doubleValue, a.isFinite else { throw bad("lora_alpha", "a finite number", v) }
                loraAlpha = a
            }
            return
        }
        guard let typeValue = present("peft_type") else {
            throw LoRACoreError.invalidConfig(file: file, detail: "missing 'peft_type'")
        }
        guard let typeName = typeValue.stringValue else { throw bad("peft_type", "a string", typeValue) }
        guard let type = PEFTType(rawValue: typeName) else {
            throw LoRACoreError.unsupportedAdapter(
                path: file, detail: "peft_type '\(typeName)' is not a LoRA adapter (supported: LORA, ADALORA)")
        }
        peftType = type
        if let v = present("r") {
            guard let n = v.intValue else { throw bad("r", "an integer", v) }
            guard n > 0 else { throw LoRACoreError.invalidConfig(file: file, detail: "'r' is \(n), must be positive") }
            r = n
        }
        if let v = present("lora_alpha") {
            guard let a = v.doubleValue else { throw bad("lora_alpha", "a number", v) }
            guard a.isFinite else { throw LoRACoreError.invalidConfig(file: file, detail: "'lora_alpha' is not finite") }
            loraAlpha = a
        } else {
            loraAlpha = Double(r)
        }
        useRslora = try bool("use_rslora") ?? false
        useDora = try bool("use_dora") ?? false
        fanInFanOut = try bool("fan_in_fan_out") ?? false
        loraBias = try bool("lora_bias") ?? false
        if let v = present("rank_pattern") {
            guard let m = v.objectMembers else { throw bad("rank_pattern", "an object", v) }
            if type == .lora {
                rankPattern = try m.map { k, x in
                    guard let n = x.intValue, n > 0 else {
                        throw LoRACoreError.invalidConfig(file: file, detail: "rank_pattern['\(k)'] must be a positive integer")
                    }
                    return (k, n)
                }
            }
        }
        if let v = present("alpha_pattern") {
            guard let m = v.objectMembers else { throw bad("alpha_pattern", "an object", v) }
            alphaPattern = try m.map { k, x in
                guard let a = x.doubleValue, a.isFinite else {
                    throw LoRACoreError.invalidConfig(file: file, detail: "alpha_pattern['\(k)'] must be a finite number")
                }
                return (k, a)
            }
        }
        if let v = present("target_modules") {
            if let s = v.stringValue {
                targetModules = .regex(s)
            } else if let a = v.arrayValue {
                targetModules = .list(try a.map { x in
                    guard let s = x.stringValue else { throw bad("target_modules", "strings", x) }
                    return s
                })
            } else {
                throw bad("target_modules", "a list or a string", v)
            }
        }
        if let v = present("modules_to_save") {
            guard let a = v.arrayValue else { throw bad("modules_to_save", "a list", v) }
            modulesToSave = try a.map { x in
                guard let s = x.stringValue else { throw bad("modules_to_save", "strings", x) }
                return s
            }
        }
        if let v = present("layers_to_transform") {
            if let n = v.intValue {
                layersToTransform = [n]
            } else if let a = v.arrayValue {
                layersToTransform = try a.map { x in
                    guard let n = x.intValue else { throw bad("layers_to_transform", "integers", x) }
                    return n
                }
            } else {
                throw bad("layers_to_transform", "an integer or a list", v)
            }
        }
        if let v = present("layers_pattern") {
            if let s = v.stringValue { layersPattern = [s] } else if let a = v.arrayValue {
                layersPattern = try a.map { x in
                    guard let s = x.stringValue else { throw bad("layers_pattern", "strings", x) }
                    return s
                }
            } else {
                throw bad("layers_pattern", "a string or a list", v)
            }
        }
        if let v = present("init_r") {
            guard let n = v.intValue, n > 0 else { throw bad("init_r", "a positive integer", v) }
            initR = n
        }
        if let v = present("layer_replication") {
            if v.arrayValue?.isEmpty != true {
                throw LoRACoreError.unsupportedAdapter(path: file, detail: "layer_replication adapters cannot be merged (PEFT refuses too)")
            }
        }
        if let v = present("init_lora_weights"), let s = v.stringValue?.lowercased(),
           s.hasPrefix("pissa") || s == "olora" || s == "corda" || s == "lora_ga" {
            throw LoRACoreError.unsupportedAdapter(
                path: file,
                detail: "init_lora_weights '\(s)' adapters change the base weights; save them with PEFT's path_initial_model_for_weight_conversion before merging")
        }
        if let v = present("alora_invocation_tokens"), v.arrayValue?.isEmpty == false {
            throw LoRACoreError.unsupportedAdapter(path: file, detail: "aLoRA adapters cannot be merged by design")
        }
    }

    /// The rank PEFT assigns to `module`: the first matching `rank_pattern` key, else `r`.
    public func rank(for module: String) -> Int {
        for (key, value) in rankPattern where (try? PatternMatcher(key, suffixRule: true))?.matches(module) == true {
            return value
        }
        return r
    }

    /// The alpha PEFT assigns to `module`: the first matching `alpha_pattern` key, else `lora_alpha`.
    public func alpha(for module: String) -> Double {
        for (key, value) in alphaPattern where (try? PatternMatcher(key, suffixRule: true))?.matches(module) == true {
            return value
        }
        return loraAlpha
    }

    /// The LoRA scaling of `module`: α/r, α/√r with rsLoRA; for AdaLoRA α / (init_r + 1e-5) with α = r when α ≤ 0.
    public func scale(for module: String, rank: Int) -> Double {
        let a = alpha(for: module)
        switch peftType {
        case .adalora:
            let alpha = a > 0 ? a : Double(self.r)
            return alpha / (Double(initR ?? self.r) + 1e-5)
        case .lora:
            return useRslora ? a / Double(rank).squareRoot() : a / Double(rank)
        }
    }

    /// Whether PEFT would have injected LoRA into `module` (target_modules + layers_to_transform).
    public func targets(_ name: TensorName) -> Bool {
        let module = name.module
        if modulesToSave.contains(where: { TargetSelector.suffixMatches(module, $0) }) { return false }
        switch targetModules {
        case .none: break
        case let .list(items):
            guard items.contains(where: { TargetSelector.suffixMatches(module, $0) }) else { return false }
        case let .regex(pattern):
            guard (try? PatternMatcher(pattern, suffixRule: false))?.matches(module) == true else { return false }
        }
        if let layers = layersToTransform {
            guard let index = layerIndex(of: module) else { return false }
            return layers.contains(index)
        }
        return true
    }

    /// PEFT's layer index: the first `.<pattern>.(\d+)` segment pair (any segment when no pattern).
    private func layerIndex(of module: String) -> Int? {
        let parts = module.split(separator: ".").map(String.init)
        for i in parts.indices.dropFirst() {
            guard let n = Int(parts[i]) else { continue }
            if let patterns = layersPattern, !patterns.contains(parts[i - 1]) { continue }
            return n
        }
        return nil
    }
}
