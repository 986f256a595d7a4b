import ArgumentParser
import Foundation
import LoRACore
import LoRAGraph
import SafeTensors

extension LoraTool {
    /// `lora-tool combine`: several adapters into one, without a base model.
    struct Combine: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Combine several LoRA adapters into one adapter (cat, linear, svd, ties, dare, magnitude pruning), without a base.",
            discussion: """
                Methods are PEFT 0.21.2's add_weighted_adapter: cat concatenates ranks (exactly Σ w·ΔW); \
                svd keeps the best rank-R (--rank, default the largest input rank) or energy-E (--energy) \
                approximation of Σ w·ΔW, computed from the factors without forming ΔW; linear, ties, \
                dare_linear, dare_ties and magnitude_prune combine A's and B's factor-wise (equal ranks); \
                the _svd variants apply those rules to the formed ΔW and truncate by SVD. --density is \
                the fraction pruning keeps; DARE's masks come from --seed (default 0) with SplitMix64 \
                streams per module, input and tensor, so a seed gives the same bytes on every machine. \
                Inputs may be of any dialect and rank (kohya needs --base to resolve names); DoRA and \
                modules_to_save are refused. Unlike PEFT, the output is plain LoRA with scale 1 even \
                when the first input is rsLoRA, and lora_B.bias is Σ w·s·b. The report gives, per \
                module, the rank, the energy kept and the relative error to Σ w·ΔW.
                """)

        @Option(name: .customLong("adapter"), help: "Input adapter (any dialect: PEFT directory, kohya or mlx file/directory, or a hub id in the local cache). Repeatable.")
        var adapters: [String] = []

        @Option(name: .customLong("weight"), parsing: .unconditionalSingleValue, help: "Weight of each --adapter, in order (default 1; negative subtracts).")
        var weights: [Double] = []

        @Option(help: "cat, linear, svd, ties, ties_svd, dare_linear, dare_linear_svd, dare_ties, dare_ties_svd, magnitude_prune or magnitude_prune_svd.")
        var method: String

        @Option(help: "Output adapter directory (or a .safetensors file with --to kohya).")
        var output: String

        @Option(help: "Base model: resolves kohya module names and gives exact PEFT target_modules.")
        var base: String?

        @Option(help: "svd and _svd methods: keep this rank per module (default: the largest input rank).")
        var rank: Int?

        @Option(help: "svd and _svd methods: keep the fewest components holding this fraction of the energy (0 < E ≤ 1).")
        var energy: Double?

        @Option(help: "Pruning methods: the fraction of entries kept (0 ≤ D ≤ 1).")
        var density: Double?

        @Option(help: "ties and dare_ties: elect each entry's sign by the sum of values (total) or of signs (frequency).")
        var majoritySign: String = "total"

        @Option(help: "dare methods: seed of the drop masks.")
        var seed: UInt64 = 0

        @Option(help: "Output dialect: peft, kohya or mlx (default peft). Image-model LoRAs (kohya, diffusers) are written in their own format.")
        var to: String?

        @Option(help: "Only these modules: comma-separated suffixes; q k v o gate up down are aliases of q_proj ... down_proj.")
        var targets: String?

        @OptionGroup var compression: ZstdArguments

        @Flag(help: "Replace an existing output that lora-tool wrote.")
        var force = false

        @Flag(help: "Print the report as JSON.")
        var json = false

        func validate() throws {
            try OutputPathCheck.validate(output, option: "--output")
            try AdapterArguments.validate(adapters: adapters, weights: weights, targets: targets)
            guard let m = CombineMethod(rawValue: method) else {
                throw ValidationError("--method must be one of \(CombineMethod.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            if let to, !["peft", "kohya", "mlx"].contains(to) { throw ValidationError("--to must be peft, kohya or mlx") }
            guard CombineOptions.MajoritySign(rawValue: majoritySign) != nil else { throw ValidationError("--majority-sign must be total or frequency") }
            if rank != nil && energy != nil { throw ValidationError("give --rank or --energy, not both") }
            if (rank != nil || energy != nil) && !m.truncates { throw ValidationError("--rank and --energy go with svd and the _svd methods") }
            if let rank, rank <= 0 { throw ValidationError("--rank must be positive") }
            if let energy, !(energy > 0 && energy <= 1) { throw ValidationError("--energy must be in (0, 1]") }
            if m.needsDensity && density == nil { throw ValidationError("--method \(method) needs --density") }
            if !m.needsDensity && density != nil { throw ValidationError("--density goes with ties, dare_*, magnitude_prune and their _svd variants") }
            if let density, !(density >= 0 && density <= 1) { throw ValidationError("--density must be in [0, 1]") }
        }

        func run() throws {
            var o = CombineOptions(adapters: try AdapterArguments.pairs(adapters: adapters, weights: weights),
                                   method: CombineMethod(rawValue: method)!, output: output)
            o.base = try base.map { try ModelSpecs.resolve($0) }
            o.rule = rank.map { .fixed($0) } ?? energy.map { .energy($0, maxRank: nil) }
            o.density = density
            o.majoritySign = CombineOptions.MajoritySign(rawValue: majoritySign)!
            o.seed = seed
            o.to = to.map { Adapter.Format(rawValue: $0)! }
            o.targets = try targets.map { try TargetSelector(parsing: $0) }
            o.force = force
            o.zstdLevel = compression.level
            let r = try LoRACore.Combine.run(o)
            if json {
                var fields: [(String, JSONValue)] = [("method", .string(r.method.rawValue)), ("to", .string(r.to))]
                if let seed = r.seed { fields.append(("seed", .number(String(seed)))) }
                fields.append(("modules", .array(r.modules.map { m in
                    var f: [(String, JSONValue)] = [("module", .string(m.module)), ("inputs", Render.json(m.inputs)), ("rank", Render.json(m.rank))]
                    if let e = m.energyKept { f.append(("energy_kept", Render.json(e))) }
                    f.append(("relative_error", Render.json(m.relativeError)))
                    f.append(("bias", .bool(m.bias)))
                    return .object(f)
                })))
                fields.append(("notes", Render.json(r.notes)))
                Render.printJSON(.object(fields))
                return
            }
            var rows = [["  module", "inputs", "rank", "energy kept", "rel. error"]]
            for m in r.modules {
                rows.append(["  " + m.module, "\(m.inputs)", "\(m.rank)", m.energyKept.map { String(format: "%.6f", $0) } ?? "-",
                             String(format: "%.3g", m.relativeError)])
            }
            var text = "\(Render.escaped(output)): combined by \(r.method.rawValue)" + (r.seed.map { " (seed \($0))" } ?? "") + "\n" + Render.table(rows)
            for n in r.notes { text += "\n  note: " + n }
            print(text)
        }
    }
}
