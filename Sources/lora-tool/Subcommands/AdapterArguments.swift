import ArgumentParser
import LoRACore
import LoRAGraph

/// `--adapter PATH ... [--weight W ...]`, shared by merge and verify.
struct AdapterArguments: ParsableArguments {
    @Option(name: .customLong("adapter"), help: "PEFT adapter directory, adapter safetensors file with adapter_config.json beside it, a kohya, LyCORIS or diffusers-format LoRA file (or its directory), or a hub id (org/name[@revision]) in the local Hugging Face cache. Repeatable.")
    var adapters: [String] = []

    @Option(name: .customLong("weight"), parsing: .unconditionalSingleValue, help: "Weight of each --adapter, in order (default 1; -1 un-merges).")
    var weights: [Double] = []

    @Option(help: "Only these modules: comma-separated suffixes; q k v o gate up down are aliases of q_proj ... down_proj.")
    var targets: String?

    @Flag(name: .customLong("residual-base"), help: "The base is the residual model a PiSSA, OLoRA, CorDA, LoRA-GA or LoftQ adapter (init_lora_weights) was trained on, so its factors add to it as they are (one adapter, weight 1).")
    var residualBase = false

    @OptionGroup var scale: ScaleArguments

    /// The checks that hold in every mode; whether --adapter is required is the command's call
    /// (`merge --assemble` and `merge --adapters-from` take none).
    func validate() throws {
        try Self.validate(adapters: adapters, weights: weights, targets: targets, requireAdapter: false)
    }

    /// The checks of `--adapter`/`--weight`/`--targets`, also for commands that spell the other options differently.
    static func validate(adapters: [String], weights: [Double], targets: String?, requireAdapter: Bool = true) throws {
        guard !adapters.isEmpty || !requireAdapter else { throw ValidationError("give at least one --adapter") }
        guard weights.isEmpty || weights.count == adapters.count else {
            throw ValidationError("give one --weight per --adapter (\(adapters.count) adapters, \(weights.count) weights)")
        }
        guard weights.allSatisfy(\.isFinite) else { throw ValidationError("--weight must be a finite number") }
        if let targets { _ = try TargetSelector(parsing: targets) }
    }

    /// Adapters resolved to local paths (hub ids through the local cache), with their weights.
    var pairs: [(path: String, weight: Double)] {
        get throws { try Self.pairs(adapters: adapters, weights: weights) }
    }

    static func pairs(adapters: [String], weights: [Double]) throws -> [(path: String, weight: Double)] {
        try adapters.enumerated().map { (try ModelSpecs.resolve($1), weights.isEmpty ? 1.0 : weights[$0]) }
    }

    var selector: TargetSelector? { get throws { try targets.map { try TargetSelector(parsing: $0) } } }
}

/// `--alpha A --rank R` or `--scale S`: the scale of adapters whose files store none (hand-written layouts).
struct ScaleArguments: ParsableArguments {
    @Option(help: "For adapters without a stored scale (hand-written layouts): lora alpha, with --rank.")
    var alpha: Double?

    @Option(help: "For adapters without a stored scale: the rank alpha is divided by.")
    var rank: Int?

    @Option(help: "For adapters without a stored scale: the scale itself (instead of --alpha/--rank).")
    var scale: Double?

    func validate() throws {
        if alpha != nil && rank == nil || rank != nil && alpha == nil { throw ValidationError("--alpha and --rank go together") }
        if scale != nil && alpha != nil { throw ValidationError("give --scale or --alpha/--rank, not both") }
        if let rank, rank <= 0 { throw ValidationError("--rank must be positive") }
        if let s = scale ?? alpha, !s.isFinite { throw ValidationError("--alpha and --scale must be finite") }
    }

    var override: AdapterScaleOverride { AdapterScaleOverride(alpha: alpha, rank: rank, scale: scale) }
}
