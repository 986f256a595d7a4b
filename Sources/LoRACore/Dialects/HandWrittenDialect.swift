import LoRAGraph
import SafeTensors

/// The scale of adapters whose files do not carry one (hand-written layouts): `--scale`, or
/// `--alpha` with `--rank` (s = α/r).
public struct AdapterScaleOverride: Sendable, Equatable {
    var alpha: Double?
    var rank: Int?
    var scale: Double?

    public init(alpha: Double? = nil, rank: Int? = nil, scale: Double? = nil) {
        self.alpha = alpha
        self.rank = rank
        self.scale = scale
    }

    /// - Throws: `LoRACoreError.invalidRequest` when neither `--scale` nor `--alpha` + `--rank` is given.
    func resolved(file: String) throws -> Double {
        if let scale { return scale }
        guard let alpha, let rank, rank > 0 else {
            throw LoRACoreError.invalidRequest(
                "\(file): a hand-written LoRA layout stores no scale; give --scale S, or --alpha A with --rank R (s = A/R)")
        }
        return alpha / Double(rank)
    }
}

/// LoRA layers written by hand and saved with `torch.save(state_dict)` → safetensors, inside a
/// whole model:
/// - a wrapper module `P` with `P.linear.weight` (and `P.linear.bias`) plus `P.lora.A`, `P.lora.B`;
/// - torch parametrizations: `P.parametrizations.weight.original` plus
///   `P.parametrizations.weight.0.lora_A`, `P.parametrizations.weight.0.lora_B`.
/// Orientation comes from the base weight W (out, in): A touches `in` and B `out`, each stored either
/// way round (A (r, in) or (in, r), B (out, r) or (r, out)); when A touches `out` and B `in` instead,
/// the layer computed `x @ B @ A` and ΔW = (B·A)ᵀ. Merged models use the plain names `P.weight` /
/// `P.bias`, and the LoRA tensors are dropped.
enum HandWrittenDialect: AdapterDialect {
    static let format = Adapter.Format.handWritten

    static func claims(tensorNames: [String]) -> Bool { isHandWritten(tensorNames) }

    static func detects(_ files: AdapterFiles) -> Bool { isHandWritten(files.checkpoint.names) }

    static func read(_ files: AdapterFiles, scale: AdapterScaleOverride) throws -> AdapterLayout {
        let layout = try pair(files.checkpoint, scale: scale, file: files.weights)
        return AdapterLayout(modules: layout.modules, renames: layout.renames, consumed: layout.consumed)
    }

    static func name(of adapter: Adapter) -> String {
        adapter.checkpoint.names.contains { $0.contains(".parametrizations.weight.0.lora_") }
            ? "hand-written LoRA (torch parametrizations)" : "hand-written LoRA (wrapper .linear + .lora.A/.lora.B)"
    }

    static func scaleRule(of adapter: Adapter) -> String { "from --scale or --alpha/--rank (the file stores none)" }

    static func write(_ factors: [LoRAFactors], adapter: Adapter, base: Checkpoint?, options: ConvertOptions, notes: inout [String]) throws {
        throw LoRACoreError.invalidRequest("hand-written layouts are read, not written; convert to peft, kohya or mlx")
    }

    static func isHandWritten(_ names: [String]) -> Bool {
        names.contains { $0.hasSuffix(".lora.A") || $0.hasSuffix(".lora.B") || $0.contains(".parametrizations.weight.0.lora_") }
    }

    struct Layout {
        var modules: [AdapterModule]
        /// Combined-checkpoint names → plain names in a merged model.
        var renames: [String: String]
        /// LoRA tensors, which a merged model drops.
        var consumed: Set<String>
    }

    static func pair(_ ckpt: Checkpoint, scale: AdapterScaleOverride, file: String) throws -> Layout {
        let s = try scale.resolved(file: file)
        var modules: [AdapterModule] = []
        var renames: [String: String] = [:]
        var consumed = Set<String>()
        for name in ckpt.names {
            let (module, baseName, aName, bName): (String, String, String, String)
            if name.hasSuffix(".lora.A") {
                module = String(name.dropLast(".lora.A".count))
                (baseName, aName, bName) = (module + ".linear.weight", name, module + ".lora.B")
                if ckpt.info(module + ".linear.bias") != nil { renames[module + ".linear.bias"] = module + ".bias" }
            } else if name.hasSuffix(".parametrizations.weight.0.lora_A") {
                module = String(name.dropLast(".parametrizations.weight.0.lora_A".count))
                (baseName, aName, bName) = (module + ".parametrizations.weight.original", name, module + ".parametrizations.weight.0.lora_B")
            } else {
                continue
            }
            guard let base = ckpt.info(baseName), base.shape.count == 2 else {
                throw LoRACoreError.invalidModule(module: module, detail: "hand-written LoRA needs its 2-D base weight '\(baseName)' in the same file")
            }
            guard let a = ckpt.info(aName), let b = ckpt.info(bName), a.shape.count == 2, b.shape.count == 2 else {
                throw LoRACoreError.invalidModule(module: module, detail: "needs 2-D '\(aName)' and '\(bName)'")
            }
            let (out, inF) = (base.shape[0], base.shape[1])
            // Which factor touches `in` (down) and which `out` (up); each may be stored either way round.
            func touches(_ shape: [Int], _ dim: Int) -> Int? {
                shape[0] == dim ? shape[1] : (shape[1] == dim ? shape[0] : nil)
            }
            var down = aName, up = bName
            var rank: Int
            if let ra = touches(a.shape, inF), let rb = touches(b.shape, out), ra == rb {
                rank = ra
            } else if let rb = touches(b.shape, inF), let ra = touches(a.shape, out), ra == rb {
                (down, up) = (bName, aName)  // x @ B @ A: ΔW = (B·A)ᵀ
                rank = ra
            } else {
                throw LoRACoreError.baseMismatch(module: module, detail: "factors \(a.shape) and \(b.shape) do not fit the base weight \(base.shape)")
            }
            let downInfo = ckpt.info(down)!, upInfo = ckpt.info(up)!
            // PEFT orientation is A (r, in), B (out, r); a tall down factor is stored transposed.
            let transposedDown = downInfo.shape == [inF, rank] && inF != rank
            let transposedUp = upInfo.shape == [rank, out] && out != rank
            guard transposedDown == transposedUp else {
                throw LoRACoreError.invalidModule(module: module, detail: "factors \(a.shape) and \(b.shape) are stored in mixed orientations")
            }
            guard rank > 0, rank <= min(out, inF) else {
                throw LoRACoreError.invalidModule(module: module, detail: "rank \(rank) does not fit the matrix \(out)×\(inF)")
            }
            var m = AdapterModule(
                module: module, kind: .linear, aName: down, bName: up, eName: nil, bBiasName: nil, magnitudeName: nil,
                rank: rank, alpha: s * Double(rank), scale: s, outFeatures: out, inFeatures: inF, transposed: false)
            m.factorsTransposed = transposedDown
            m.baseTensorOverride = baseName
            modules.append(m)
            renames[baseName] = module + ".weight"
            consumed.formUnion([aName, bName])
        }
        return Layout(modules: modules.sorted { utf8Precedes($0.module, $1.module) }, renames: renames, consumed: consumed)
    }
}
