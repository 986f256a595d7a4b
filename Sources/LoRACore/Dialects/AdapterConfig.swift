import Foundation
import LoRAGraph
import SafeTensors

/// The fields of PEFT's `adapter_config.json` that decide the merge (`LoraConfig`).
///
/// Missing fields take PEFT's defaults (old configs lack newer fields). Types are checked: a wrong
/// type, a non-positive `r`, or a non-finite `lora_alpha` is an error, never a guess.
public struct AdapterConfig: Sendable, Equatable {
    public enum PEFTType: String, Sendable, CaseIterable {
        case lora = "LORA", adalora = "ADALORA", loha = "LOHA", lokr = "LOKR", ia3 = "IA3", vera = "VERA", oft = "OFT", boft = "BOFT"
        case fourierft = "FOURIERFT"

        /// The registered update type reading this PEFT type's tensors (nil for LoRA and AdaLoRA).
        var updateType: (any AdapterUpdateType.Type)? {
            switch self {
            case .lora, .adalora: return nil
            case .loha: return LoHa.self
            case .lokr: return LoKr.self
            case .ia3: return IA3.self
            case .vera: return VeRA.self
            case .oft: return OFT.self
            case .boft: return BOFT.self
            case .fourierft: return FourierFT.self
            }
        }
    }
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
    /// OFT's fields (`coft`, `eps`, `block_share`, `use_cayley_neumann`, `num_cayley_neumann_terms`).
    public var oft = OFTSettings()
    /// FourierFT's fields (`scaling`, `random_loc_seed`, `n_frequency`, `n_frequency_pattern`); nil for other types.
    public var fourierFT: FourierFTSettings?
    /// `rank_pattern` in file order (PEFT uses the first key that matches, in dict insertion order, which
    /// is file order: the JSON parser keeps member order and rejects duplicate keys).
    public private(set) var rankPattern: [(key: String, value: Int)] = []
    /// `alpha_pattern` in file order.
    public private(set) var alphaPattern: [(key: String, value: Double)] = []
    public private(set) var targetModules: Targets = .none
    /// `target_parameters`: `<module>.<parameter>` keys of parameters PEFT wraps with LoRA
    /// (`lora.ParamWrapper`, e.g. MoE experts' `mlp.experts.gate_up_proj`), as listed in the file.
    public private(set) var targetParameters: [String] = []

    /// Whether a `target_parameters` entry selects parameter `key` (`<module>.<parameter>`, the
    /// module without wrappers): PEFT's `key in target_names or key.endswith("." + target)`.
    func targetsParameter(_ key: String) -> Bool {
        targetParameters.contains { key == $0 || key.hasSuffix("." + $0) }
    }

    /// Whether some `target_parameters` entry names a parameter of `module` (its module part equals
    /// the module or is a dot-boundary suffix of it).
    func hasParameterTargets(in module: String) -> Bool {
        targetParameters.contains { t in
            let m = t[..<t.lastIndex(of: ".")!]
            return module == m || module.hasSuffix("." + m)
        }
    }
    /// `exclude_modules`: modules PEFT leaves out even when `target_modules` names them.
    public private(set) var excludeModules: Targets = .none
    /// `modules_to_save`; each entry is also a regex in PEFT's exclusion rule (see `targets(_:)`).
    public private(set) var modulesToSave: [String] = []
    public var layersToTransform: [Int]?
    public private(set) var layersPattern: [String]?

    // Every pattern compiled once, when the config is loaded (PythonRegex: Python's `re` semantics).
    private var rankMatchers: [PatternMatcher] = []
    private var alphaMatchers: [PatternMatcher] = []
    private var targetMatcher: PatternMatcher?
    private var excludeMatcher: PatternMatcher?
    private var modulesToSaveMatchers: [PythonRegex] = []
    private var nFrequencyMatchers: [PythonRegex] = []
    private var layersPatternRegexes: [PythonRegex] = []
    /// `init_lora_weights` when it names a method (`pissa_niter_16`, `olora`, `gaussian`, …).
    public private(set) var initLoraWeights: String?
    /// The method when it trained the adapter on a residual model (PiSSA, OLoRA, CorDA, LoRA-GA,
    /// LoftQ): its factors then add to that model, not to the original.
    public private(set) var residualInitialisation: ResidualInitialisation?
    /// `init_r` (AdaLoRA).
    public var initR: Int?
    /// `layer_replication`: the model's layers listed again as [start, end) ranges (PEFT's
    /// `replicate_layers`), applied by `LayerReplicationPass`.
    public private(set) var layerReplication: [(start: Int, end: Int)]?
    /// `trainable_token_indices`: the tokens whose embedding rows were trained, for the input
    /// embedding (module nil: a plain list) or per module name (PEFT's dict form), in file order.
    public private(set) var trainableTokenIndices: [(module: String?, indices: [Int])] = []

    /// The trained token indices of embedding `module` (its full name): the dict entry that is the
    /// module's name or a dot-boundary suffix of it, else the plain list.
    func tokenIndices(for module: String) -> [Int]? {
        if let e = trainableTokenIndices.first(where: { e in e.module.map { module == $0 || module.hasSuffix("." + $0) } ?? false }) {
            return e.indices
        }
        return trainableTokenIndices.first { $0.module == nil }?.indices
    }

    public static func == (l: AdapterConfig, r: AdapterConfig) -> Bool {
        l.peftType == r.peftType && l.r == r.r && l.loraAlpha == r.loraAlpha && l.useRslora == r.useRslora
            && l.useDora == r.useDora && l.fanInFanOut == r.fanInFanOut && l.targetModules == r.targetModules
            && l.rankPattern.map(\.key) == r.rankPattern.map(\.key) && l.rankPattern.map(\.value) == r.rankPattern.map(\.value)
            && l.alphaPattern.map(\.key) == r.alphaPattern.map(\.key) && l.alphaPattern.map(\.value) == r.alphaPattern.map(\.value)
            && l.modulesToSave == r.modulesToSave && l.layersToTransform == r.layersToTransform
            && l.layersPattern == r.layersPattern && l.loraBias == r.loraBias && l.oft == r.oft && l.fourierFT == r.fourierFT
            && l.targetParameters == r.targetParameters && l.residualInitialisation == r.residualInitialisation
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
                path: file, detail: "peft_type '\(typeName)' is not supported (supported: \(PEFTType.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        peftType = type
        if let v = present("r") {
            guard let n = v.intValue else { throw bad("r", "an integer", v) }
            // OFT: r (blocks) or oft_block_size, the other 0; the stored generator's shape decides.
            guard n > 0 || (type == .oft && n == 0) else { throw LoRACoreError.invalidConfig(file: file, detail: "'r' is \(n), must be positive") }
            r = n
        }
        // LoHa/LoKr (LycorisConfig) call it `alpha` (default 8); IA³ has no scale.
        let alphaKey = type == .loha || type == .lokr ? "alpha" : "lora_alpha"
        if let v = present(alphaKey) {
            guard let a = v.doubleValue else { throw bad(alphaKey, "a number", v) }
            guard a.isFinite else { throw LoRACoreError.invalidConfig(file: file, detail: "'\(alphaKey)' is not finite") }
            loraAlpha = a
        } else {
            loraAlpha = type == .loha || type == .lokr ? 8 : Double(r)
        }
        if type == .ia3 || type == .vera || type == .oft || type == .boft || type == .fourierft, try bool("fan_in_fan_out") == true {
            let why = type == .oft || type == .boft ? " (PEFT's \(type.updateType!.name) has no Conv1D layer)" : " yet"
            throw LoRACoreError.unsupportedAdapter(path: file, detail: "\(type.updateType!.name) with fan_in_fan_out (GPT-2 Conv1D) is not supported\(why)")
        }
        if type == .oft {
            // PEFT's OFTConfig.check_kwargs: an OFT saved before 0.14 has no oft_block_size and another layout.
            guard root["oft_block_size"] != nil else {
                throw LoRACoreError.unsupportedAdapter(path: file, detail: "OFT without oft_block_size was saved by PEFT before 0.14, whose OFT layout PEFT itself no longer loads")
            }
            oft.coft = try bool("coft") ?? false
            oft.blockShare = try bool("block_share") ?? false
            oft.cayleyNeumann = try bool("use_cayley_neumann") ?? true
            if let v = present("eps") {
                guard let e = v.doubleValue, e.isFinite, e >= 0 else { throw bad("eps", "a finite number ≥ 0", v) }
                oft.eps = e
            }
            if let v = present("num_cayley_neumann_terms") {
                guard let n = v.intValue, n >= 1 else { throw bad("num_cayley_neumann_terms", "a positive integer", v) }
                oft.neumannTerms = n
            }
            if oft.cayleyNeumann {
                // PEFT 0.18 changed the series (check_kwargs warns and merges with the new one).
                let version = present("peft_version")?.stringValue?.split(separator: "@").first.map(String.init) ?? "0.0.0"
                let parts = version.split(separator: ".").prefix(2).map { Int($0) ?? 0 }
                if parts.count < 2 || parts[0] == 0 && parts[1] < 18 {
                    throw LoRACoreError.unsupportedAdapter(
                        path: file, detail: "use_cayley_neumann OFT saved by PEFT \(version == "0.0.0" ? "before 0.18 (no peft_version)" : version): its series differs from PEFT 0.18's, which PEFT applies anyway")
                }
            }
        }
        if type == .vera, try bool("save_projection") == false {
            throw LoRACoreError.unsupportedAdapter(
                path: file, detail: "VeRA saved with save_projection false: the shared vera_A/vera_B are not in the file (PEFT regenerates them from projection_prng_key with torch's generator)")
        }
        if type == .fourierft {
            if case .null? = root["random_loc_seed"] {
                throw LoRACoreError.unsupportedAdapter(path: file, detail: "FourierFT random_loc_seed null: torch's manual_seed needs a seed")
            }
            fourierFT = try Self.fourierFTSettings(present, bad: bad, file: file)
        }
        useRslora = try bool("use_rslora") ?? false
        useDora = try bool("use_dora") ?? false
        fanInFanOut = try bool("fan_in_fan_out") ?? false
        loraBias = try bool("lora_bias") ?? false
        if let v = present("rank_pattern") {
            guard let m = v.objectMembers else { throw bad("rank_pattern", "an object", v) }
            if type == .lora || type == .loha || type == .lokr {
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
        if let v = present("exclude_modules") {
            if let s = v.stringValue {
                excludeModules = .regex(s)
            } else if let a = v.arrayValue {
                excludeModules = .list(try a.map { x in
                    guard let s = x.stringValue else { throw bad("exclude_modules", "strings", x) }
                    return s
                })
            } else {
                throw bad("exclude_modules", "a list or a string", v)
            }
        }
        // Fields that change what a merge must do and that lora-tool does not implement: refused by
        // name rather than ignored.
        if let v = present("target_parameters") {
            guard let a = v.arrayValue else { throw bad("target_parameters", "a list", v) }
            targetParameters = try a.map { x in
                guard let s = x.stringValue else { throw bad("target_parameters", "strings", x) }
                // PEFT matches `<module>.<parameter>` keys; a bare name would also match every module's own parameter.
                guard let dot = s.lastIndex(of: "."), dot != s.startIndex, s.index(after: dot) != s.endIndex else {
                    throw LoRACoreError.unsupportedAdapter(path: file, detail: "target_parameters entry '\(s)' names no module ('<module>.<parameter>' expected)")
                }
                return s
            }
            if !targetParameters.isEmpty {
                guard type == .lora else {
                    throw LoRACoreError.unsupportedAdapter(path: file, detail: "target_parameters with peft_type \(type.rawValue): PEFT wraps parameters for LoRA only")
                }
                // lora.ParamWrapper raises for these; a file claiming them was not written by PEFT.
                for (field, set) in [("use_dora", try bool("use_dora") == true), ("fan_in_fan_out", try bool("fan_in_fan_out") == true),
                                     ("lora_bias", try bool("lora_bias") == true)] where set {
                    throw LoRACoreError.unsupportedAdapter(path: file, detail: "target_parameters with \(field): PEFT's ParamWrapper does not support it")
                }
            }
        }
        if let v = present("trainable_token_indices") {
            func indices(_ x: JSONValue, _ field: String) throws -> [Int] {
                guard let a = x.arrayValue else { throw bad(field, "a list of token indices", x) }
                return try a.map { i in
                    guard let n = i.intValue else { throw bad(field, "integers", i) }
                    return n
                }
            }
            if v.arrayValue != nil {
                trainableTokenIndices = [(nil, try indices(v, "trainable_token_indices"))]
            } else if let m = v.objectMembers {
                trainableTokenIndices = try m.map { k, x in (k, try indices(x, "trainable_token_indices['\(k)']")) }
            } else {
                throw bad("trainable_token_indices", "a list or an object of lists", v)
            }
            guard type == .lora else {
                throw LoRACoreError.unsupportedAdapter(path: file, detail: "trainable_token_indices with peft_type \(type.rawValue): PEFT trains tokens beside LoRA only")
            }
        }
        if let v = present("bias"), v.stringValue != "none" {
            throw LoRACoreError.unsupportedAdapter(path: file, detail: "bias '\(v.stringValue ?? "?")': adapters that train the base's biases are not supported yet")
        }
        if present("megatron_config") != nil {
            throw LoRACoreError.unsupportedAdapter(path: file, detail: "megatron_config (Megatron parallel layers) is not supported")
        }
        if let v = present("use_qalora"), v.boolValue == true {
            throw LoRACoreError.unsupportedAdapter(path: file, detail: "use_qalora adapters are not supported")
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
            guard let ranges = v.arrayValue else { throw bad("layer_replication", "a list of [start, end] pairs", v) }
            if !ranges.isEmpty {
                layerReplication = try ranges.map { r in
                    guard let pair = r.arrayValue, pair.count == 2, let a = pair[0].intValue, let b = pair[1].intValue, a >= 0, a < b else {
                        throw bad("layer_replication", "[start, end] pairs with 0 ≤ start < end", r)
                    }
                    return (a, b)
                }
            }
        }
        if let v = present("init_lora_weights") {
            if let s = v.stringValue {
                do {
                    residualInitialisation = try ResidualInitialisation(configValue: s)
                } catch {
                    throw LoRACoreError.unsupportedAdapter(
                        path: file, detail: "init_lora_weights '\(s)' is not an initialisation PEFT 0.21.2 defines; lora-tool cannot tell what it did to the base")
                }
                initLoraWeights = s
            } else if v.boolValue == nil {
                throw bad("init_lora_weights", "true, false or a method name", v)
            }
        }
        if let v = present("alora_invocation_tokens"), v.arrayValue?.isEmpty == false {
            throw LoRACoreError.unsupportedAdapter(path: file, detail: "aLoRA adapters cannot be merged by design")
        }
        try compilePatterns(file: file)
    }

    /// FourierFT's fields (`n_frequency_pattern`'s keys are compiled with the other patterns).
    /// `init_weights` only decides the initial spectrum.
    /// - Throws: `LoRACoreError.invalidConfig` naming `file` and the field; `.unsupportedAdapter` for a
    ///   `random_loc_seed` that is negative or not an integer below 2⁶³ (the caller refuses null).
    private static func fourierFTSettings(_ present: (String) -> JSONValue?, bad: (String, String, JSONValue) -> LoRACoreError,
                                          file: String) throws -> FourierFTSettings {
        var f = FourierFTSettings()
        if let v = present("scaling") {
            guard let x = v.doubleValue, x.isFinite else { throw bad("scaling", "a finite number", v) }
            f.scaling = x
        }
        if let v = present("random_loc_seed") {
            guard let n = v.intValue, n >= 0 else {
                throw LoRACoreError.unsupportedAdapter(path: file, detail: "FourierFT random_loc_seed \(v.intValue.map(String.init) ?? v.typeName) is not supported (an integer from 0 to 2^63 - 1 is)")
            }
            f.seed = UInt64(n)
        }
        if let v = present("n_frequency") {
            guard let n = v.intValue, n > 0 else { throw bad("n_frequency", "a positive integer", v) }
            f.nFrequency = n
        }
        if let v = present("n_frequency_pattern") {
            guard let m = v.objectMembers else { throw bad("n_frequency_pattern", "an object", v) }
            for (k, x) in m {
                guard let n = x.intValue, n > 0 else { throw bad("n_frequency_pattern['\(k)']", "a positive integer", x) }
                f.patternKeys.append(k)
                f.patternValues.append(n)
            }
        }
        return f
    }

    // MARK: - Patterns (PEFT 0.21.2 rules, Python `re` semantics)

    /// Compiles every pattern the merge may consult, so a pattern lora-tool cannot read exactly is a load
    /// error, never a silently skipped key.
    /// - Throws: `LoRACoreError.invalidConfig` (Python's `re` rejects the pattern) or `.unsupportedAdapter`
    ///   (outside `PythonRegex`'s subset), naming `file`, the field and the pattern.
    private mutating func compilePatterns(file: String) throws {
        func compile<T>(_ field: String, _ pattern: String, _ make: () throws -> T) throws -> T {
            do {
                return try make()
            } catch let GraphError.invalidPattern(_, detail) {
                throw LoRACoreError.invalidConfig(file: file, detail: "\(field) pattern '\(pattern)' is not a valid regular expression: \(detail)")
            } catch let GraphError.unsupportedPattern(_, construct) {
                throw LoRACoreError.unsupportedAdapter(
                    path: file, detail: "\(field) pattern '\(pattern)' uses \(construct), which lora-tool's Python-compatible matcher does not support")
            }
        }
        rankMatchers = try rankPattern.map { k, _ in try compile("rank_pattern", k) { try PatternMatcher(k, suffixRule: true) } }
        alphaMatchers = try alphaPattern.map { k, _ in try compile("alpha_pattern", k) { try PatternMatcher(k, suffixRule: true) } }
        if case let .regex(p) = targetModules {
            targetMatcher = try compile("target_modules", p) { try PatternMatcher(p, suffixRule: false) }
        }
        if case let .regex(p) = excludeModules {
            excludeMatcher = try compile("exclude_modules", p) { try PatternMatcher(p, suffixRule: false) }
        }
        // check_target_module_exists: re.match(rf"(^|.*\.){m}($|\..*)", key), m pasted as text.
        modulesToSaveMatchers = try modulesToSave.map { m in
            try compile("modules_to_save", m) {
                try PythonRegex(#"(^|.*\.)"# + m + #"($|\..*)"#, reportedAs: m, offset: 7)
            }
        }
        // FourierFTModel._create_and_replace: re.match(rf".*\.{key}$", key), key pasted as text.
        nFrequencyMatchers = try (fourierFT?.patternKeys ?? []).map { k in
            try compile("n_frequency_pattern", k) { try PythonRegex(#".*\."# + k + "$", reportedAs: k, offset: 4) }
        }
        // Layer filtering only applies to list target_modules with a non-empty layers_to_transform.
        if case .list = targetModules, layersToTransform?.isEmpty == false, let patterns = layersPattern, !patterns.isEmpty {
            layersPatternRegexes = try patterns.map { p in
                let regex = try compile("layers_pattern", p) { try PythonRegex(p) }
                // PEFT pastes the pattern into (?:^|.*?\.){p}\.(?P<idx>\d+)\. and reads the group Python's
                // backtracking picks; with a fixed width and no top-level "|" that group is the only one.
                guard !regex.isTopLevelAlternation, let w = regex.width.max, w == regex.width.min else {
                    throw LoRACoreError.unsupportedAdapter(
                        path: file,
                        detail: "layers_pattern pattern '\(p)' is not a fixed-width pattern without top-level '|', which lora-tool needs to find PEFT's layer index exactly")
                }
                return regex
            }
        }
    }

    /// The rank PEFT assigns to `module`: the first `rank_pattern` key (file order) for which
    /// `re.match(rf"(.*\.)?({key})$", module)` succeeds (`get_pattern_key`), else `r`.
    public func rank(for module: String) -> Int {
        for (i, m) in rankMatchers.enumerated() where m.matches(module) { return rankPattern[i].value }
        return r
    }

    /// FourierFT's n for `module` (its full name): the value of the first `n_frequency_pattern` key
    /// (file order) with `re.match(rf".*\.{key}$", module)`, else of a key equal to the name (PEFT's
    /// fallback looks the name itself up), else `n_frequency`.
    func nFrequency(for module: String) -> Int {
        guard let f = fourierFT else { return 0 }
        if let i = nFrequencyMatchers.firstIndex(where: { $0.prefixMatch(module) }) { return f.patternValues[i] }
        if let i = f.patternKeys.firstIndex(of: module) { return f.patternValues[i] }
        return f.nFrequency
    }

    /// The alpha PEFT assigns to `module`: the first matching `alpha_pattern` key (same rule), else `lora_alpha`.
    public func alpha(for module: String) -> Double {
        for (i, m) in alphaMatchers.enumerated() where m.matches(module) { return alphaPattern[i].value }
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
        case .loha, .lokr:
            return a / Double(rank)
        case .ia3, .vera, .oft, .boft:
            return 1
        case .fourierft:
            return fourierFT?.scaling ?? 1
        }
    }

    /// Whether PEFT would have injected LoRA into `module` (`check_target_module_exists`, PEFT 0.21.2):
    /// a module matching `re.match(rf"(^|.*\.){m}($|\..*)")` for a `modules_to_save` entry is excluded; a
    /// string `target_modules` must `re.fullmatch`; a list entry must equal the name (then no layer check)
    /// or be a dot-boundary suffix, and then `layers_to_transform` must contain the layer index.
    public func targets(_ name: TensorName) -> Bool {
        let module = name.module
        if modulesToSaveMatchers.contains(where: { $0.prefixMatch(module) }) { return false }
        switch excludeModules {
        case .none: break
        case .regex: if excludeMatcher?.matches(module) == true { return false }
        case let .list(items): if items.contains(where: { module == $0 || module.hasSuffix("." + $0) }) { return false }
        }
        switch targetModules {
        case .none: break
        case .regex: return targetMatcher?.matches(module) == true
        case let .list(items):
            if items.contains(module) { return true }
            guard items.contains(where: { module.hasSuffix("." + $0) }) else { return false }
        }
        guard let layers = layersToTransform, !layers.isEmpty else { return true }
        guard let index = layerIndex(of: module) else { return false }
        return layers.contains(index)
    }

    /// PEFT's layer index: with no `layers_pattern`, `re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key)`; else the
    /// first pattern p for which `re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", key)` matches. `\d` is any
    /// Unicode decimal digit (Python's `int()` reads them all). Nil when nothing matches or the index
    /// overflows `Int` (Python's big integer could not be in `layers_to_transform` either).
    private func layerIndex(of module: String) -> Int? {
        let t = Array(module.unicodeScalars)
        // Where `.*?\.` can end: just after a dot with no "\n" before it (`.` stops at newlines), leftmost first.
        var afterDots: [Int] = []
        for (i, c) in t.enumerated() {
            if c == "\n" { break }
            if c == "." { afterDots.append(i + 1) }
        }
        /// `\.(\d+)\.` at `pos`: the digits' value.
        func index(at pos: Int) -> Int? {
            guard pos < t.count, t[pos] == "." else { return nil }
            var j = pos + 1
            var value = 0
            var overflow = false
            while j < t.count, PythonRegex.isDecimalDigit(t[j]) {
                let (m, o1) = value.multipliedReportingOverflow(by: 10)
                let (a, o2) = m.addingReportingOverflow(Int(t[j].properties.numericValue ?? 0))
                overflow = overflow || o1 || o2
                value = a
                j += 1
            }
            guard j > pos + 1, j < t.count, t[j] == "." else { return nil }
            return overflow ? nil : value
        }
        if layersPatternRegexes.isEmpty {
            for start in afterDots {
                // `[^.]*` runs to the next dot (greedy; a shorter run could not be followed by `\.`).
                guard let dot = t[start...].firstIndex(of: ".") else { return nil }
                if let v = index(at: dot) { return v }
            }
            return nil
        }
        for regex in layersPatternRegexes {
            let width = regex.width.min  // fixed (checked at load): the only end of a match at `start`
            for start in [0] + afterDots where start + width <= t.count {
                guard regex.matchEnds(in: t, from: start)[start + width] else { continue }
                if let v = index(at: start + width) { return v }
            }
        }
        return nil
    }
}
