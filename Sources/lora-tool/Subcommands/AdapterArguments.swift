import ArgumentParser
import LoRAGraph

/// `--adapter PATH ... [--weight W ...]`, shared by merge and verify.
struct AdapterArguments: ParsableArguments {
    @Option(name: .customLong("adapter"), help: "PEFT adapter directory, or adapter safetensors file with adapter_config.json beside it. Repeatable.")
    var adapters: [String] = []

    @Option(name: .customLong("weight"), parsing: .unconditionalSingleValue, help: "Weight of each --adapter, in order (default 1; -1 un-merges).")
    var weights: [Double] = []

    @Option(help: "Only these modules: comma-separated suffixes; q k v o gate up down are aliases of q_proj ... down_proj.")
    var targets: String?

    func validate() throws {
        guard !adapters.isEmpty else { throw ValidationError("give at least one --adapter") }
        guard weights.isEmpty || weights.count == adapters.count else {
            throw ValidationError("give one --weight per --adapter (\(adapters.count) adapters, \(weights.count) weights)")
        }
        guard weights.allSatisfy(\.isFinite) else { throw ValidationError("--weight must be a finite number") }
        if let targets { _ = try TargetSelector(parsing: targets) }
    }

    var pairs: [(path: String, weight: Double)] {
        adapters.enumerated().map { ($1, weights.isEmpty ? 1.0 : weights[$0]) }
    }

    var selector: TargetSelector? { get throws { try targets.map { try TargetSelector(parsing: $0) } } }
}
