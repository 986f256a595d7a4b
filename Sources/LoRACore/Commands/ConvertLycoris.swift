import Foundation
import LoRAGraph
import SafeTensors

/// `convert --to peft|kohya` for LoHa and LoKr adapters: a LyCORIS file (kohya names, `hada_*` /
/// `lokr_*`, a scalar `alpha` per module) as a PEFT LOHA/LOKR adapter directory, and back.
///
/// Every factor is written with its bytes, dtype and shape unchanged (`hada_w1_a` … `hada_t2`,
/// `lokr_w1` … `lokr_t2`: both layouts store the same tensors under the same role names); only the
/// names (`lora_te_<module with _>.<role>` ↔ `base_model.model.<module>.<role>`) and the scale's
/// spelling change, chosen so that each module's fp32 scale, the only number the merge takes from
/// them, is the same:
/// - LoHa: both packages scale by alpha/r with r the factors' rank, so alpha is copied. LyCORIS reads
///   alpha 0 as r (scale 1), so a PEFT module with α = 0 is refused; LyCORIS stores alpha in fp32,
///   so an α whose fp32 value gives another fp32 scale is refused.
/// - LoKr: LyCORIS scales a module whose halves are both full matrices by 1 whatever its alpha
///   (`lokr.py` sets alpha = dim); PEFT always by α/r. To PEFT such a module gets α = r, r the
///   smallest rank for which PEFT builds both halves full; to LyCORIS a PEFT module with both halves
///   full and α/r ≠ 1 is refused. Otherwise r is the inner dimension of the decomposed half
///   (PEFT's r), α is copied.
///
/// PEFT builds a LoKr's halves from its config, not from the file (`LoKrLayer.update_layer`:
/// `factorization(dim, decompose_factor)`, `decompose_both`, `use_effective_conv2d`, r), so the
/// config written must make PEFT build exactly the stored shapes: `decompose_factor` is the first of
/// -1 and the stored dimensions for which PEFT's factorization gives every module's (a, c) and
/// (b, d); a file no single setting reproduces (LyCORIS' `unbalanced_factorization`, per-module
/// factors) is refused naming the module. LoHa's `use_effective_conv2d` is set when the modules carry
/// Tucker cores, and refused when they disagree.
public enum ConvertLycoris {
    /// Converts `adapter` (its `modules` resolved against `base` when given) to `options.to`.
    /// - Throws: `LoRACoreError` naming the module a target cannot hold, and write errors.
    static func run(adapter: Adapter, modules: [AdapterModule], base: Checkpoint?, options: ConvertOptions) throws -> ConvertReport {
        let target = options.to == .peft ? "PEFT" : "LyCORIS"
        guard options.to == .peft || options.to == .kohya else {
            throw LoRACoreError.unsupportedAdapter(
                path: adapter.path, detail: "\(options.to.rawValue) holds LoRA only: module '\(modules[0].module)' is \(modules[0].typeName) (write --to peft or kohya, or --to lora by SVD)")
        }
        // LyCORIS LoCon modules (a LyCORIS file's own) are rewritten as LyCORIS only.
        for m in modules where !(m.update?.type is LoHa.Type || m.update?.type is LoKr.Type || (m.update?.type is LoCon.Type && options.to == .kohya)) {
            throw LoRACoreError.unsupportedAdapter(
                path: adapter.path,
                detail: "module '\(m.module)' is \(m.typeName): convert --to peft|kohya rewrites LoHa and LoKr only, and LyCORIS LoCon as LyCORIS (--to lora takes any additive type)")
        }
        let typeName = modules[0].typeName
        if options.to == .peft, let other = modules.first(where: { $0.typeName != typeName }) {
            throw LoRACoreError.unsupportedAdapter(
                path: adapter.path, detail: "module '\(other.module)' is \(other.typeName) but '\(modules[0].module)' is \(typeName): a PEFT adapter has one peft_type")
        }
        if options.to == .peft, let m = modules.first(where: { $0.update!.lycorisDoRA != nil }) {
            throw LoRACoreError.invalidModule(module: m.module, detail: "has LyCORIS DoRA (dora_scale), which PEFT's \(m.typeName) cannot hold")
        }
        if options.to == .kohya, let m = modules.first(where: { $0.update!.peftConv1dKron }) {
            throw LoRACoreError.invalidModule(
                module: m.module, detail: "a Conv1d LoKr with a full lokr_w2: PEFT's make_kron leaves w1 unaligned for it, so the same tensors make another ΔW in LyCORIS")
        }
        if options.to == .kohya, let r = adapter.replacements.first {
            throw LoRACoreError.unsupportedAdapter(path: adapter.path, detail: "LyCORIS files cannot hold full replacement tensors ('\(r.base)', modules_to_save)")
        }
        // Each module's base shape, when there is a base (kernel sizes and LoKr's (a·c, b·d) split).
        var baseShapes: [String: [Int]] = [:]
        if let base {
            for m in modules {
                guard let info = base.info(m.baseWeightName), m.fits(info.shape) else {
                    throw LoRACoreError.baseMismatch(module: m.module, detail: "base '\(m.baseWeightName)' is missing or has another shape than \(m.expectedShapeDescription)")
                }
                baseShapes[m.module] = info.shape
            }
        }
        let shapes = { (m: AdapterModule) in m.update!.tensors.mapValues { adapter.checkpoint.info($0)!.shape } }
        var plans: [(module: AdapterModule, original: AdapterModule, rank: Int, alpha: Double)] = []
        var notes: [String] = []
        if options.to == .peft {
            var settings = PEFTSettings()
            if typeName == LoHa.name {
                plans = zip(modules, adapter.modules).map { ($0, $1, $0.rank, $0.alpha) }
                settings.effectiveConv = try loHaEffectiveConv(modules, shapes: shapes, baseShapes: baseShapes)
            } else {
                let lokr = try modules.map { m in try LoKrShape(m, shapes: shapes(m), base: baseShapes[m.module]) }
                settings.decomposeBoth = lokr.contains { $0.w1Rank != nil }
                settings.effectiveConv = lokr.contains { $0.tucker }
                plans = zip(zip(modules, adapter.modules), lokr).map { pair, s in
                    let (m, original) = pair
                    guard let r = s.w1Rank ?? s.w2Rank else {
                        // Both halves full: keep a PEFT module's own r and α; a LyCORIS one (scale 1) gets α = r.
                        if adapter.format == .peft { return (m, original, m.rank, m.alpha) }
                        let r = max(1, (max(s.c, s.d) + 1) / 2, settings.decomposeBoth ? (max(s.a, s.b) + 1) / 2 : 0)
                        return (m, original, r, Double(r) * m.scale)
                    }
                    return (m, original, r, m.alpha)
                }
                settings.decomposeFactor = try decomposeFactor(lokr, ranks: plans.map(\.rank), settings: settings)
                if adapter.format == .lycoris, lokr.contains(where: { $0.w1Rank == nil && $0.w2Rank == nil }) {
                    notes.append("LoKr modules with both halves full (LyCORIS scale 1) written with α = r")
                }
            }
            for p in plans where Float(p.alpha / Double(p.rank)) != Float(p.module.scale) {
                throw LoRACoreError.invalidModule(module: p.module.module, detail: "its scale \(p.module.scale) cannot be written as PEFT's α/r with r = \(p.rank)")
            }
            try writePEFT(plans, type: typeName, settings: settings, adapter: adapter, base: base, options: options)
        } else {
            plans = try zip(modules, adapter.modules).map { m, original in
                let alpha = try lycorisAlpha(m, shapes: shapes(m))
                return (m, original, m.rank, alpha)
            }
            try writeLycoris(plans, adapter: adapter, baseShapes: baseShapes, options: options)
        }
        notes.append("factors copied unchanged (same bytes and dtypes) under \(target) names")
        return ConvertReport(from: adapter.dialect, to: options.to.rawValue, modules: plans.count,
                             scales: Array(Set(plans.map(\.module.scale))).sorted(), notes: notes)
    }

    // MARK: - LyCORIS

    /// The `alpha` a LyCORIS file needs for `m`'s scale.
    /// - Throws: `LoRACoreError.invalidModule` when LyCORIS' rules cannot give that scale.
    private static func lycorisAlpha(_ m: AdapterModule, shapes: [String: [Int]]) throws -> Double {
        if m.typeName == LoKr.name && shapes["lokr_w1"] != nil && shapes["lokr_w2"] != nil {
            guard m.scale == 1 else {
                throw LoRACoreError.invalidModule(
                    module: m.module, detail: "LyCORIS scales a LoKr whose halves are both full matrices by 1; this module's α/r = \(m.scale) cannot be written")
            }
            return 1
        }
        let alpha = m.scale * Double(m.rank)
        guard alpha != 0 else {
            throw LoRACoreError.invalidModule(module: m.module, detail: "its α is 0 (ΔW = 0), which LyCORIS reads as alpha = r (scale 1)")
        }
        guard Float(Double(Float(alpha)) / Double(m.rank)) == Float(m.scale) else {
            throw LoRACoreError.invalidModule(module: m.module, detail: "α = \(alpha) stored as LyCORIS' fp32 alpha gives another fp32 scale than α/r = \(m.scale)")
        }
        return Double(Float(alpha))
    }

    /// `lora_te_<module with _>.<role>` (a LyCORIS or kohya input keeps its own key) and `.alpha` (F32).
    private static func writeLycoris(_ plans: [(module: AdapterModule, original: AdapterModule, rank: Int, alpha: Double)],
                                     adapter: Adapter, baseShapes: [String: [Int]], options: ConvertOptions) throws {
        var tensors: [AdapterSink.Tensor] = []
        for p in plans {
            let key = adapter.format == .peft ? "lora_te_" + p.module.module.replacingOccurrences(of: ".", with: "_") : p.original.module
            tensors += try copies(of: p.original, adapter: adapter, core: { shape in
                // PEFT stores a Conv1d's core as (r, r, k, 1), LyCORIS as (r, r, k); a k×1 Conv2d's is (r, r, k, 1) in both.
                guard shape.count == 4, shape[3] == 1 else { return shape }
                guard let base = baseShapes[p.module.module] else {
                    throw LoRACoreError.invalidRequest(
                        "module '\(p.module.module)': give --base: a (r, r, k, 1) Tucker core is a Conv1d's in PEFT but a k×1 Conv2d's in LyCORIS")
                }
                return base.count == 3 ? Array(shape.dropLast()) : shape
            }) { key + "." + $0 }
            let alpha = Float(p.alpha)
            tensors.append(.init(name: key + ".alpha", dtype: .float32, shape: []) { AdapterSink.floatBytes([alpha]) })
        }
        try KohyaDialect.writeOutput(tensors.sorted { utf8Precedes($0.name, $1.name) }, metadata: nil, options: options)
    }

    /// The module's stored tensors, bytes unchanged, under `name(role)`; a Tucker core's shape through
    /// `core` (the target layout's spelling of a Conv1d kernel).
    private static func copies(of m: AdapterModule, adapter: Adapter, core: ([Int]) throws -> [Int], name: (String) -> String) throws -> [AdapterSink.Tensor] {
        try m.update!.tensors.sorted { $0.key < $1.key }.map { role, tensor in
            let info = adapter.checkpoint.info(tensor)!
            let shape = ["hada_t1", "hada_t2", "lokr_t2"].contains(role) ? try core(info.shape) : info.shape
            return AdapterSink.Tensor(name: name(role), dtype: info.dtype, shape: shape) { Array(try adapter.checkpoint.bytes(of: tensor)) }
        }
    }

    // MARK: - PEFT

    /// The LoHa/LoKr config fields that decide the shapes PEFT builds.
    struct PEFTSettings {
        var decomposeBoth = false
        var decomposeFactor = -1
        var effectiveConv = false
    }

    /// `use_effective_conv2d` for LoHa: whether the modules carry Tucker cores. PEFT applies it to every
    /// convolution with a kernel other than 1×1, so a k×k module without cores beside one with them
    /// cannot be written.
    private static func loHaEffectiveConv(_ modules: [AdapterModule], shapes: (AdapterModule) -> [String: [Int]], baseShapes: [String: [Int]]) throws -> Bool {
        let tucker = modules.filter { shapes($0)["hada_t1"] != nil }
        guard let first = tucker.first else { return false }
        if let plain = modules.first(where: { m in shapes(m)["hada_t1"] == nil && (baseShapes[m.module].map { $0.dropFirst(2).contains { $0 != 1 } } ?? false) }) {
            throw LoRACoreError.invalidModule(
                module: plain.module, detail: "a k×k convolution LoHa without Tucker cores beside '\(first.module)' with them: PEFT's one use_effective_conv2d cannot build both")
        }
        return true
    }

    /// A LoKr module's halves: w1 (a × b), w2 (c × d[ × kernel]), each full (rank nil) or decomposed.
    struct LoKrShape {
        let module: String
        var a = 0, b = 0, c = 0, d = 0
        var w1Rank: Int?, w2Rank: Int?
        var tucker = false
        /// The weight's out and in channels, and whether it is a convolution with a kernel other than 1×1.
        var out = 0, inChannels = 0
        var spatialKernel = false

        init(_ m: AdapterModule, shapes s: [String: [Int]], base: [Int]?) throws {
            module = m.module
            if let w1 = s["lokr_w1"] { (a, b) = (w1[0], w1[1]) } else { (a, b, w1Rank) = (s["lokr_w1_a"]![0], s["lokr_w1_b"]![1], s["lokr_w1_a"]![1]) }
            if let w2 = s["lokr_w2"] {
                guard w2.count != 3 else {
                    throw LoRACoreError.invalidModule(
                        module: module, detail: "a Conv1d LoKr with a full lokr_w2 \(w2): PEFT's make_kron leaves w1 unaligned for it, so the same tensors make another ΔW in PEFT and LyCORIS")
                }
                (c, d) = (w2[0], w2[1])
            } else if let t = s["lokr_t2"] {
                (c, d, w2Rank, tucker) = (s["lokr_w2_a"]![1], s["lokr_w2_b"]![1], t[0], true)
            } else {
                c = s["lokr_w2_a"]![0]
                w2Rank = s["lokr_w2_a"]![1]
                // Without a base, read as a Linear's (a convolution's lokr_w2_b also holds its kernel).
                d = base.map { $0[1] / b } ?? s["lokr_w2_b"]![1]
            }
            if let w1r = w1Rank, let w2r = w2Rank, w1r != w2r {
                throw LoRACoreError.invalidModule(module: module, detail: "lokr_w1_a has rank \(w1r) but the second half \(w2r): PEFT has one r per module")
            }
            (out, inChannels) = (a * c, b * d)
            let kernel = base.map { Array($0.dropFirst(2)) } ?? Array((s["lokr_w2"] ?? s["lokr_t2"] ?? []).dropFirst(2))
            spatialKernel = kernel.contains { $0 != 1 }
        }

        /// Whether PEFT, with rank `r` and `settings`, builds exactly these halves.
        func builtByPEFT(rank r: Int, _ settings: PEFTSettings) -> Bool {
            let (outL, outK) = ConvertLycoris.factorization(out, settings.decomposeFactor)
            let (inM, inN) = ConvertLycoris.factorization(inChannels, settings.decomposeFactor)
            guard (outL, outK, inM, inN) == (a, c, b, d) else { return false }
            let useW1 = !(settings.decomposeBoth && Double(r) < Double(max(a, b)) / 2)
            let useW2 = Double(r) >= Double(max(c, d)) / 2
            return useW1 == (w1Rank == nil) && useW2 == (w2Rank == nil) && (useW2 || !spatialKernel || settings.effectiveConv == tucker)
        }
    }

    /// The first `decompose_factor` (-1, then the stored dimensions in increasing order) with which
    /// PEFT builds every module's halves.
    /// - Throws: `LoRACoreError.invalidModule` naming a module that -1 does not reproduce.
    private static func decomposeFactor(_ shapes: [LoKrShape], ranks: [Int], settings: PEFTSettings) throws -> Int {
        let candidates = [-1] + Set(shapes.flatMap { [$0.a, $0.b, $0.c, $0.d] }).sorted()
        for f in candidates {
            var s = settings
            s.decomposeFactor = f
            if zip(shapes, ranks).allSatisfy({ $0.builtByPEFT(rank: $1, s) }) { return f }
        }
        let bad = zip(shapes, ranks).first { !$0.builtByPEFT(rank: $1, settings) }.map(\.0) ?? shapes[0]
        throw LoRACoreError.invalidModule(
            module: bad.module, detail: "LoKr halves (\(bad.a)×\(bad.b)) ⊗ (\(bad.c)×\(bad.d)) are not what PEFT builds for any one decompose_factor, decompose_both and use_effective_conv2d shared by all modules")
    }

    /// PEFT 0.21.2's `lokr.layer.factorization`: `dimension` as m·n, m ≤ n, m as close to `factor`
    /// as the divisors allow (a factor dividing `dimension` is taken as m as is, even when m > n).
    public static func factorization(_ dimension: Int, _ factor: Int) -> (Int, Int) {
        if factor > 0 && dimension % factor == 0 { return (factor, dimension / factor) }
        let limit = factor == -1 ? dimension : factor
        var (m, n) = (1, dimension)
        let length = m + n
        while m < n {
            var newM = m + 1
            while dimension % newM != 0 { newM += 1 }
            let newN = dimension / newM
            if newM + newN > length || newM > limit { break }
            (m, n) = (newM, newN)
        }
        return m > n ? (n, m) : (m, n)
    }

    private static func writePEFT(_ plans: [(module: AdapterModule, original: AdapterModule, rank: Int, alpha: Double)], type: String,
                                  settings: PEFTSettings, adapter: Adapter, base: Checkpoint?, options: ConvertOptions) throws {
        var tensors: [AdapterSink.Tensor] = []
        for p in plans {
            // LyCORIS stores a Conv1d's Tucker core as (r, r, k), PEFT as (r, r, k, 1).
            tensors += try copies(of: p.original, adapter: adapter, core: { $0.count == 3 ? $0 + [1] : $0 }) { "base_model.model." + p.module.module + "." + $0 }
        }
        let targeted = Set(plans.map(\.module.module))
        tensors += PEFTDialect.replacementTensors(adapter, targeted: targeted)
        let (r, rankPattern) = AdapterSink.rankSummary(plans.map { ($0.module.module, $0.rank) })
        let alpha = Convert.mostCommon(plans.map(\.alpha))
        let all = base.map { Set($0.names.map { TensorName($0).module }) } ?? targeted
        func num(_ x: Double) -> JSONValue { x == x.rounded() && abs(x) < 1e15 ? .number(String(Int(x))) : .number("\(x)") }
        var fields: [(String, JSONValue)] = [
            ("alpha", num(alpha)),
            ("alpha_pattern", .object(plans.filter { $0.alpha != alpha }.map { ($0.module.module, num($0.alpha)) }.sorted { $0.0 < $1.0 })),
            ("base_model_name_or_path", .null), ("exclude_modules", .null), ("inference_mode", .bool(true)), ("init_weights", .bool(true)),
            ("layers_pattern", .null), ("layers_to_transform", .null), ("module_dropout", .number("0.0")),
            ("modules_to_save", adapter.format == .peft && !adapter.config.modulesToSave.isEmpty ? .array(adapter.config.modulesToSave.map { .string($0) }) : .null),
            ("peft_type", .string(type.uppercased())), ("r", .number(String(r))), ("rank_dropout", .number("0.0")),
            ("rank_pattern", .object(rankPattern.sorted { $0.0 < $1.0 }.map { ($0.0, .number(String($0.1))) })),
            ("revision", .null),
            ("target_modules", .array(TargetSelector.minimalSuffixes(selecting: targeted, among: all.union(targeted)).map { .string($0) })),
            ("task_type", .null), ("use_effective_conv2d", .bool(settings.effectiveConv)),
        ]
        if type == LoKr.name {
            fields += [("decompose_both", .bool(settings.decomposeBoth)), ("decompose_factor", .number(String(settings.decomposeFactor))),
                       ("rank_dropout_scale", .bool(false))]
        }
        let json = JSONWriter.pretty(.object(fields.sorted { $0.0 < $1.0 }.map { (key: $0.0, value: $0.1) }))
        try AdapterSink.writeDirectory(tensors.sorted { utf8Precedes($0.name, $1.name) }, weightsName: "adapter_model.safetensors", metadata: [("format", "pt")],
                                       sideFiles: [("adapter_config.json", json)], to: options.output, force: options.force, zstdLevel: options.zstdLevel)
    }
}
