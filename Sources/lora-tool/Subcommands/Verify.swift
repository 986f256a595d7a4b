import ArgumentParser
import Foundation
import LoRACore
import SafeTensors

extension VerifyMode: ExpressibleByArgument {}

extension LoraTool {
    /// `lora-tool verify`: prove a merged model is what merge writes for base + adapters.
    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check that a merged model equals base + adapters, element by element and on random probes.",
            discussion: """
                Exact check (--mode exact or both, the default): every output tensor is recomputed with \
                merge's own code and every element of the merged file compared with it. Copied and \
                replaced tensors must be identical (or equal to their cast to the merged dtype); merged \
                bf16/f16 tensors within 1 ulp of the recomputed value; merged f32 tensors within 4 ulp of \
                the tensor's largest magnitude over W and W' (normwise). A failure names the tensor, the \
                element (flat index, row and column), the stored and expected values and the distance in ulps. \
                Probe check (--mode probes or both): for every merged module, N probe vectors x give \
                y_merged = W'·x and y_side = W·x + Σ w·s·B(A·x) in fp64 (DoRA, embeddings and Conv1D as \
                merge), and max|y_merged − y_side| / max(|W||x| + |w·s||B||A||x|) must stay within the \
                tolerance (auto: 2× the unit roundoff of the merged dtype plus fp32 accumulation of the \
                rank-r product). The probes come from a fresh random seed, printed in the report (--seed \
                reproduces them). Both modes: missing or extra tensors fail; each merged file's \
                __metadata__ must be {"format": "pt"}; the merged directory's side files must be the \
                base's (byte for byte; config.json equal as JSON except torch_dtype/dtype naming the \
                merged dtype, and quantization_config dropped or llm_int8_skip_modules grown for a 4-bit \
                base), none missing, none extra. \
                GGUF (a .gguf --base and --merged, as merge writes them): both files are read as merge \
                reads its base (block types dequantized exactly, llama.cpp's Q/K row order undone) and \
                each merged tensor is compared with what merge writes for it in its ggml type: block \
                types (Q8_0, Q4_K, ...) must hold the very codes of the requantization of base + delta, \
                F32/F16/BF16 values the bounds above; untouched tensors must be the base's bytes, and \
                the header the base's metadata; merged tensors must all be in the types of one \
                --gguf-type. Probes apply to F32/F16/BF16 merged tensors only (a quantized tensor's \
                distance from the side branch is its quantization error, which no tolerance bounds): \
                --mode probes is refused for a file with block-type merged tensors, and --mode both \
                checks those exactly only. Exit 0 when everything passes, 1 otherwise, with one \
                error: line per failure. Use it in CI: \
                `lora-tool merge ... --output out && lora-tool verify ... --merged out || exit 1`.
                """)

        @Option(help: "Base model the adapters were merged into: a path (a diffusers pipeline folder is checked component by component), or a hub id (org/name[@revision]) in the local Hugging Face cache. Default: the adapter's base_model_name_or_path, when it is available locally.")
        var base: String?

        @Option(help: "Revision of a hub-id --base (a branch or tag under refs/, or a commit hash); default main.")
        var revision: String?

        @OptionGroup var adapterArguments: AdapterArguments

        @Option(help: "The merged model to check.")
        var merged: String

        @Option(help: "exact (every element against merge's recomputation), probes (random probes in fp64, faster), or both.")
        var mode: VerifyMode = .both

        @Option(help: "Probe vectors per module.")
        var probes: Int = 8

        @Option(help: "Seed of the probe vectors (default: a fresh random seed, printed in the report).")
        var seed: UInt64?

        @Option(help: "Probe check: auto, or a relative tolerance such as 1e-3.")
        var tolerance: String = "auto"

        @Option(help: "Worker threads.")
        var threads: Int = ProcessInfo.processInfo.activeProcessorCount

        @Flag(help: "Print the report as JSON.")
        var json = false

        @Option(help: ArgumentHelp("Check only part I (0-based) of N of the merged model's files (balanced by bytes, as merge --part splits them); part 0 also checks the tensor list, side files and metadata. 'auto' reads the scheduler's variables as merge --part auto does.", valueName: "I/N|auto"))
        var part: String?

        @Option(help: "The number of parts, for --part auto when the scheduler does not export it.")
        var parts: Int?

        func validate() throws {
            guard !adapterArguments.adapters.isEmpty else { throw ValidationError("give at least one --adapter") }
            if let part, part != "auto" { do { _ = try PartSelection.parse(part, parts: parts, environment: [:]) } catch { throw ValidationError(error.localizedDescription) } }
            if part == nil && parts != nil { throw ValidationError("--parts goes with --part auto") }
            guard probes >= 1 else { throw ValidationError("--probes must be at least 1") }
            guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
            if tolerance != "auto" {
                guard let t = Double(tolerance), t.isFinite, t >= 0 else { throw ValidationError("--tolerance must be auto or a non-negative number") }
            }
        }

        func run() throws {
            let adapters = try adapterArguments.pairs
            let resolvedBase = try ModelSpecs.base(base, adapter: adapters[0].path, revision: revision)
            var options = VerifyOptions(base: resolvedBase, adapters: adapters, merged: merged)
            options.mode = mode
            options.probes = probes
            options.seed = seed
            options.threads = threads
            options.tolerance = tolerance == "auto" ? nil : Double(tolerance)
            options.targets = try adapterArguments.selector
            options.part = try part.map { try PartSelection.parse($0, parts: parts) }
            options.scaleOverride = adapterArguments.scale.override
            options.residualBase = adapterArguments.residualBase
            let report = try LoRACore.Verify.run(options)
            if json {
                Render.printJSON(jsonReport(report))
            } else {
                print(text(report))
            }
            if !report.passed {
                for e in report.failures {
                    for f in e.failures { Render.diagnostic("error: \(e.tensor): \(f)") }
                }
                for f in report.fileFailures { Render.diagnostic("error: \(f.file): \(f.detail ?? f.status.rawValue)") }
                throw ExitCode.failure
            }
        }

        func text(_ r: VerifyReport) -> String {
            let checked = r.entries.filter { $0.kind == .merged || $0.kind == .bias || !$0.passed }
            var rows = [["  tensor", "family", "kind", "max ulp", "bound", "probe error", "tolerance", "result"]]
            for e in checked {
                let ulp = e.exact.map { formattedError($0.maxUlps) } ?? "-"
                let bound = e.exact.map { Render.number($0.allowedUlps) + ($0.normwise ? " (normwise)" : "") } ?? "-"
                rows.append(["  " + e.tensor, e.family, e.kind.rawValue, ulp, bound,
                             e.probes.map { formattedError($0.relativeError) } ?? "-", e.probes.map { formattedError($0.tolerance) } ?? "-",
                             e.passed ? "pass" : "FAIL"])
            }
            var lines = [Render.table(rows)]
            let identical = r.entries.filter { ($0.kind == .copied || $0.kind == .replaced) && $0.passed }.count
            let changed = r.files.filter { !$0.expectedChanges.isEmpty }.map { "\($0.file) (\($0.expectedChanges.joined(separator: ", ")) as merge writes it)" }
            var files = "files: \(r.files.filter(\.passed).count) of \(r.files.count) as merge writes them (side files and __metadata__)"
            if !changed.isEmpty { files += "; " + changed.joined(separator: ", ") }
            if let skipped = r.sideFilesSkipped { files += "; side files not compared: \(skipped)" }
            lines.append(Render.escaped(files))
            if r.mode != .exact { lines.append("probes: \(r.probes) per merged module, seed \(r.seed) (--seed \(r.seed) reproduces them)") }
            if let skipped = r.probesSkipped { lines.append("probes not run: \(skipped)") }
            let how = r.mode == .probes ? "on \(r.probes) probes"
                : (r.mode == .exact ? "element by element" : "element by element and on \(r.probes) probes" + (r.probesSkipped == nil ? "" : " where they apply"))
            let scope = r.part.map { "part \($0): " } ?? ""
            lines.append(scope + (r.passed
                ? "PASS: \(r.entries.count) tensors (\(checked.count) merged, checked \(how); \(identical) identical to their source)"
                : "FAIL: \(r.failures.count) of \(r.entries.count) tensors and \(r.fileFailures.count) of \(r.files.count) files differ"))
            return lines.joined(separator: "\n")
        }

        func formattedError(_ x: Double) -> String { x == 0 ? "0" : (x.isFinite ? String(format: "%.3g", x) : "inf") }

        func jsonReport(_ r: VerifyReport) -> JSONValue {
            func exact(_ e: VerifyReport.ExactResult) -> JSONValue {
                .object([
                    ("max_ulp", Render.json(e.maxUlps)), ("allowed_ulp", Render.json(e.allowedUlps)), ("normwise", .bool(e.normwise)),
                    ("over_bound", Render.json(e.overBound)),
                    ("worst", e.worst.map { w in
                        .object([("index", Render.json(w.index)), ("row", w.row.map(Render.json) ?? .null), ("col", w.column.map(Render.json) ?? .null),
                                 ("got", Render.json(w.got)), ("expected", Render.json(w.expected)), ("ulp", Render.json(w.ulps))])
                    } ?? .null),
                ])
            }
            func probes(_ p: VerifyReport.ProbeResult) -> JSONValue {
                .object([("max_abs_error", Render.json(p.maxAbsError)), ("relative_error", Render.json(p.relativeError)),
                         ("error_relative_to_output", Render.json(p.errorRelativeToOutput)), ("tolerance", Render.json(p.tolerance))])
            }
            return .object([
                ("passed", .bool(r.passed)),
                ("mode", .string(r.mode.rawValue)),
                ("probes", Render.json(r.probes)),
                ("seed", .number(String(r.seed))),
                ("part", r.part.map { .string($0.description) } ?? .null),
                ("tensors", .array(r.entries.map {
                    .object([("tensor", .string($0.tensor)), ("family", .string($0.family)), ("kind", .string($0.kind.rawValue)),
                             ("passed", .bool($0.passed)), ("exact", $0.exact.map(exact) ?? .null), ("probes", $0.probes.map(probes) ?? .null),
                             ("failures", Render.json($0.failures))])
                })),
                ("files", .array(r.files.map {
                    .object([("file", .string($0.file)), ("status", .string($0.status.rawValue)), ("passed", .bool($0.passed)),
                             ("expected_changes", Render.json($0.expectedChanges)), ("detail", $0.detail.map { .string($0) } ?? .null)])
                })),
                ("side_files_skipped", r.sideFilesSkipped.map { .string($0) } ?? .null),
                ("probes_skipped", r.probesSkipped.map { .string($0) } ?? .null),
            ])
        }
    }
}
