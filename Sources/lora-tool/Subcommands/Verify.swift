import ArgumentParser
import Foundation
import LoRACore
import SafeTensors

extension LoraTool {
    /// `lora-tool verify`: prove merged outputs equal side-branch outputs.
    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check that a merged model equals base + adapters (side branch) on random probes.",
            discussion: """
                For every adapted module, N seeded probe vectors x give y_merged = W'·x and \
                y_side = W·x + Σ w·s·B(A·x) (DoRA, embeddings and Conv1D as merge), in fp64. The error \
                max|y_merged − y_side| / max(|W||x| + |w·s||B||A||x|) must stay within the tolerance \
                (auto: 2× the unit roundoff of the merged dtype plus fp32 accumulation of the rank-r \
                product). Untouched tensors must be byte-identical (or equal after a dtype cast), \
                replacements equal to the adapter's copy; missing or extra tensors fail. Exit 0 when \
                everything passes, 1 otherwise. Use it in CI: \
                `lora-tool merge ... --output out && lora-tool verify ... --merged out || exit 1`.
                """)

        @Option(help: "Base model the adapters were merged into: a path, or a hub id (org/name[@revision]) in the local Hugging Face cache. Default: the adapter's base_model_name_or_path, when it is available locally.")
        var base: String?

        @Option(help: "Revision of a hub-id --base (a branch or tag under refs/, or a commit hash); default main.")
        var revision: String?

        @OptionGroup var adapterArguments: AdapterArguments

        @Option(help: "The merged model to check.")
        var merged: String

        @Option(help: "Probe vectors per module.")
        var probes: Int = 8

        @Option(help: "Seed of the probe vectors.")
        var seed: UInt64 = 0

        @Option(help: "auto, or a relative tolerance such as 1e-3.")
        var tolerance: String = "auto"

        @Flag(help: "Print the report as JSON.")
        var json = false

        func validate() throws {
            guard probes >= 1 else { throw ValidationError("--probes must be at least 1") }
            if tolerance != "auto" {
                guard let t = Double(tolerance), t.isFinite, t >= 0 else { throw ValidationError("--tolerance must be auto or a non-negative number") }
            }
        }

        func run() throws {
            let adapters = try adapterArguments.pairs
            let resolvedBase = try ModelSpecs.base(base, adapter: adapters[0].path, revision: revision)
            var options = VerifyOptions(base: resolvedBase, adapters: adapters, merged: merged)
            options.probes = probes
            options.seed = seed
            options.tolerance = tolerance == "auto" ? nil : Double(tolerance)
            options.targets = try adapterArguments.selector
            options.scaleOverride = adapterArguments.scale.override
            let report = try LoRACore.Verify.run(options)
            if json {
                Render.printJSON(jsonReport(report))
            } else {
                print(text(report))
            }
            if !report.passed {
                for f in report.failures {
                    FileHandle.standardError.write(Data("error: \(f.tensor): \(f.detail ?? "failed")\n".utf8))
                }
                throw ExitCode.failure
            }
        }

        func text(_ r: VerifyReport) -> String {
            let checked = r.entries.filter { $0.kind == .merged || $0.kind == .bias || !$0.passed }
            var rows = [["  tensor", "family", "kind", "rel. error", "tolerance", "result"]]
            for e in checked {
                rows.append(["  " + e.tensor, e.family, e.kind.rawValue, formattedError(e.relativeError), formattedError(e.tolerance), e.passed ? "pass" : "FAIL"])
            }
            let exact = r.entries.filter { ($0.kind == .copied || $0.kind == .replaced) && $0.passed }.count
            let verdict = r.passed
                ? "PASS: \(r.entries.count) tensors (\(checked.count) merged within tolerance on \(r.probes) probes, \(exact) exact)"
                : "FAIL: \(r.failures.count) of \(r.entries.count) tensors differ"
            return Render.table(rows) + "\n" + verdict
        }

        func formattedError(_ x: Double) -> String { x == 0 ? "0" : (x.isFinite ? String(format: "%.3g", x) : "inf") }

        func jsonReport(_ r: VerifyReport) -> JSONValue {
            .object([
                ("passed", .bool(r.passed)),
                ("probes", Render.json(r.probes)),
                ("seed", .number(String(r.seed))),
                ("tensors", .array(r.entries.map {
                    .object([("tensor", .string($0.tensor)), ("family", .string($0.family)), ("kind", .string($0.kind.rawValue)),
                             ("max_abs_error", Render.json($0.maxAbsError)), ("relative_error", Render.json($0.relativeError)),
                             ("error_relative_to_output", Render.json($0.errorRelativeToOutput)),
                             ("tolerance", Render.json($0.tolerance)), ("passed", .bool($0.passed)),
                             ("detail", $0.detail.map { .string($0) } ?? .null)])
                })),
            ])
        }
    }
}
