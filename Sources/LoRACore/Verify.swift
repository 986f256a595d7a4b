import Foundation
import LoRAGraph
import SafeTensors

/// Options of `lora-tool verify`.
public struct VerifyOptions: Sendable {
    public var base: String
    public var adapters: [(path: String, weight: Double)]
    public var merged: String
    public var probes = 8
    public var seed: UInt64 = 0
    /// nil = automatic per dtype and rank.
    public var tolerance: Double?
    public var targets: TargetSelector?

    public init(base: String, adapters: [(path: String, weight: Double)], merged: String) {
        self.base = base
        self.adapters = adapters
        self.merged = merged
    }
}

/// `verify`: proves a merged checkpoint equals base + side branch, tensor by tensor, streaming.
public enum Verify {
    /// Checks every tensor: merged modules on probes (fp64), untouched tensors byte for byte (or
    /// after a dtype cast), replacements against the adapter's copy, and missing or extra tensors.
    /// - Returns: the report; it says whether everything passed (the caller decides the exit code).
    /// - Throws: only when an input cannot be read or paired.
    public static func run(_ options: VerifyOptions) throws -> VerifyReport {
        let base = try Checkpoint(path: options.base)
        let adapters = try options.adapters.map { try Adapter(path: $0.path) }
        let plan = try MergePlan(base: base, adapters: adapters, weights: options.adapters.map(\.weight), targets: options.targets)
        let merged = try Checkpoint(path: options.merged)
        let checker = MergeChecker(plan: plan, probes: options.probes, seed: options.seed, tolerance: options.tolerance)
        var entries: [VerifyReport.Entry] = []
        func missing(_ name: String, _ kind: VerifyReport.Entry.Kind, _ detail: String) -> VerifyReport.Entry {
            VerifyReport.Entry(tensor: name, family: TensorName(name).family, kind: kind, maxAbsError: .infinity,
                               relativeError: .infinity, errorRelativeToOutput: .infinity, tolerance: 0, passed: false, detail: detail)
        }
        for name in plan.names {
            guard let info = merged.info(name) else {
                entries.append(missing(name, .missing, "missing from the merged checkpoint"))
                continue
            }
            entries.append(try checker.check(name: name, mergedInfo: info, mergedBytes: try merged.bytes(of: name)))
        }
        for name in merged.names where base.info(name) == nil {
            entries.append(missing(name, .extra, "in the merged checkpoint but not in the base"))
        }
        return VerifyReport(entries: entries, probes: options.probes, seed: options.seed)
    }
}
