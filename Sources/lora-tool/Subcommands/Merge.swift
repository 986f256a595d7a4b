import ArgumentParser
import Foundation
import GGUF
import LoRACore
import SafeTensors

extension LoraTool {
    /// `lora-tool merge`: fold adapters into a base model.
    struct Merge: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Merge one or more LoRA adapters into a base model: W' = W + Σ w·s·B·A.",
            discussion: """
                Exactly PEFT's merge (α/r or α/√r with rsLoRA, rank_pattern/alpha_pattern, fan_in_fan_out, \
                embedding LoRA, DoRA, lora_B.bias, modules_to_save replacements, layers_to_transform), \
                computed in fp32 and rounded once to the output dtype. Untouched tensors are copied byte \
                for byte. The output directory is built under a temporary name and renamed into place \
                when complete; side files (config.json, tokenizer files) are copied. The report gives \
                each written file's SHA-256. The merged bytes are the same on every CPU: the merge \
                kernel sums in one fixed order on every instruction set (portable C, AVX2, AVX-512) \
                and never uses BLAS; LORA_TOOL_ISA=scalar|avx2|avx512 forces one.

                Image models: a diffusers pipeline folder (model_index.json) as --base merges each \
                component (unet, transformer, text_encoder, text_encoder_2) with the LoRA modules that \
                target it, from diffusers-format files (unet.…lora_A.weight, alpha from \
                lora_adapter_metadata) or kohya files (lora_unet_, lora_te_, lora_te1_, lora_te2_), and \
                copies every other file byte for byte; the output is a pipeline folder. A component \
                folder (unet/) as --base keeps its file name (diffusion_pytorch_model.safetensors). \
                An SD 1.x, 2.x or SDXL single-file checkpoint (original LDM/sgm names: model.diffusion_model., \
                cond_stage_model.transformer. or cond_stage_model.model. or conditioner.embedders.0.transformer. \
                and conditioner.embedders.1.model., first_stage_model.) as --base is merged into one file, \
                --output NAME.safetensors, with the base's tensor names and metadata; the LoRA's unet and \
                text-encoder modules are mapped to its keys (SDXL's q/k/v to the row thirds of OpenCLIP's \
                in_proj_weight, SD 2.x's likewise), kohya SDXL UNet names in sgm form included. A Flux \
                transformer single file (BFL names: double_blocks.0.img_attn.qkv.weight, or ComfyUI's \
                model.diffusion_model.double_blocks.…) is merged into one file the same way, from kohya \
                (lora_unet_, or ComfyUI's diffusion_model.) or diffusers-format Flux LoRAs (a diffusers module's q, k, v \
                or proj_mlp into its rows of qkv or linear1, norm_out.linear's halves swapped). A kohya \
                Flux LoRA's fused qkv and linear1 modules are split exactly for a diffusers transformer.
                """)

        @Option(help: "Base model: directory (single or sharded safetensors; a diffusers pipeline or component folder), .safetensors file, or a hub id (org/name[@revision]) in the local Hugging Face cache. Default: the adapter's base_model_name_or_path, when it is available locally.")
        var base: String?

        @Option(help: "Revision of a hub-id --base (a branch or tag under refs/, or a commit hash); default main.")
        var revision: String?

        @OptionGroup var adapterArguments: AdapterArguments

        @Option(help: "Output model directory (NAME.safetensors, one file, for an SD or Flux single-file --base): must not exist (or be an empty directory); --force replaces only an output lora-tool wrote.")
        var output: String?

        @Option(help: "Output dtype of float tensors: keep, f32, f16 or bf16.")
        var dtype: String = "keep"

        @Option(help: "Largest shard, e.g. 500MB, 5GB, 2GiB (decimal units as transformers). Default: 5GB, as transformers saves models; 10GB for a diffusers model or pipeline component, as diffusers saves them.")
        var maxShardSize: String?

        @Flag(help: "Verify the output as lora-tool verify does (every element, random probes, side files and metadata) before it gets its name; fail (and leave no output) if anything differs. With --requantize or --keep-quantized: the dense merge is checked on random probes as computed, before it is requantized.")
        var verify = false

        @Flag(help: "Replace an existing output that lora-tool wrote (it carries the .lora-tool marker); anything else is never replaced.")
        var force = false

        @Flag(help: "Write through the page cache without fsync, as cp does: no wait for the disk, but a power failure soon after can leave incomplete files (a killed lora-tool still never does).")
        var noSync = false

        @Flag(help: "Report each written file's SHA-256 (as sha256sum prints it; in --json under \"sha256\"), computed while the file is written. It costs about 1 s of CPU per 1.8 GB of output: on two cores, as much as the rest of a merge. A --part always computes them for its manifest.")
        var checksum = false

        @Option(help: "With a quantized base: write the merged weights back in the base's format (keep; or its name: nf4, fp4, fp8, int8, mxfp4) and report how much of each delta survived. Untouched quantized weights (and MXFP4 experts) are copied as stored.")
        var requantize: String?

        @Flag(help: "With a bitsandbytes 4-bit base: keep untouched weights 4-bit as they were; merged weights are written dense.")
        var keepQuantized = false

        @Option(help: "With a GGUF base (llama.cpp; the output is then a .gguf file): the ggml type of the merged tensors: keep (each its base tensor's type, requantized with ggml's reference quantizers), f32, f16, bf16, q8_0, q4_0, q4_k, q5_k or q6_k. Untouched tensors are copied as stored. With a transformers base and a .gguf output (written as convert_hf_to_gguf.py writes it): the weights' type, f16 (keep), f32, bf16 or q8_0.")
        var ggufType: String = "keep"

        @Option(help: ArgumentHelp("With a .gguf output: write it as llama.cpp's split model (X-00001-of-00003.gguf and so on), each shard holding at most SIZE bytes of tensors (a number, or with K, M or G: powers of 1000), as convert_hf_to_gguf.py --split-max-size does; a model that fits is one file. Without it a split GGUF base (give its first shard) keeps its shards.", valueName: "SIZE"))
        var splitMaxSize: String?

        @Flag(help: "Write values that overflow the output dtype (e.g. above 65504 with --dtype f16) as ±Inf and count them, instead of failing.")
        var allowOverflow = false

        @Flag(help: "Write an unchanged copy of the base when no adapter module applies (--targets, target_modules or layers_to_transform match nothing), instead of failing.")
        var allowEmpty = false

        @Option(help: "Tensors computed in parallel (default: the number of cores).")
        var threads: Int = ProcessInfo.processInfo.activeProcessorCount

        @Flag(help: "Print the summary as JSON.")
        var json = false

        @Flag(help: "No progress bar.")
        var quiet = false

        @Flag(help: "Print the recipe equivalent to this command line (for `lora-tool run`) and exit without merging.")
        var printRecipe = false

        @Option(help: ArgumentHelp("Write only part I (0-based) of N of the output's shards, for a job array; 'auto' reads $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT or $JOB_COMPLETION_INDEX (with --parts). Parts wait beside the output until --assemble. With --adapters-from: merge only this part's adapters.", valueName: "I/N|auto"))
        var part: String?

        @Option(help: "The number of parts, for --part auto when the scheduler does not export it (Kubernetes Indexed Jobs).")
        var parts: Int?

        @Option(help: ArgumentHelp("Assemble the parts of a partitioned merge (--part) into OUT, after checking that all are present and consistent; no other input is needed.", valueName: "OUT"))
        var assemble: String?

        @Option(help: ArgumentHelp("Merge each adapter listed in this file (one path per line) into the base, one output each (--output-template).", valueName: "LIST"))
        var adaptersFrom: String?

        @Option(help: ArgumentHelp("Output path of each --adapters-from adapter; {name} is replaced by the adapter's directory name.", valueName: "TEMPLATE"))
        var outputTemplate: String?

        func validate() throws {
            let adapterGiven = !adapterArguments.adapters.isEmpty
            if let assemble {
                try OutputPathCheck.validate(assemble, option: "--assemble")
                let others = [("--base", base != nil), ("--adapter", adapterGiven), ("--output", output != nil), ("--adapters-from", adaptersFrom != nil),
                              ("--part", part != nil), ("--verify", verify), ("--dtype", dtype != "keep"), ("--max-shard-size", maxShardSize != nil),
                              ("--requantize", requantize != nil), ("--keep-quantized", keepQuantized), ("--targets", adapterArguments.targets != nil),
                              ("--weight", !adapterArguments.weights.isEmpty), ("--print-recipe", printRecipe), ("--gguf-type", ggufType != "keep"),
                              ("--split-max-size", splitMaxSize != nil)]
                if let given = others.first(where: \.1) { throw ValidationError("--assemble takes only the output (and --force, --json): the parts recorded everything else; \(given.0) is not used") }
                return
            }
            if adaptersFrom != nil {
                guard outputTemplate != nil else { throw ValidationError("--adapters-from needs --output-template (e.g. 'merged/{name}')") }
                guard !adapterGiven, output == nil else { throw ValidationError("give --adapters-from with --output-template, or --adapter with --output, not both") }
                guard adapterArguments.weights.isEmpty else { throw ValidationError("--weight is per --adapter; a batch merges each listed adapter with weight 1") }
                guard !printRecipe else { throw ValidationError("--print-recipe describes one merge, not a batch") }
            } else {
                guard adapterGiven else { throw ValidationError("give at least one --adapter (or --adapters-from LIST)") }
                guard output != nil else { throw ValidationError("give --output") }
                guard outputTemplate == nil else { throw ValidationError("--output-template goes with --adapters-from") }
            }
            if let part {
                if part != "auto" { do { _ = try PartSelection.parse(part, parts: parts, environment: [:]) } catch { throw ValidationError(error.localizedDescription) } }
                if verify && adaptersFrom == nil { throw ValidationError("--verify checks a whole model: run lora-tool verify --part \(part) on the assembled output instead") }
            } else if parts != nil {
                throw ValidationError("--parts goes with --part auto")
            }
            try OutputPathCheck.validate(output, option: "--output")
            guard OutputDType(rawValue: dtype) != nil else { throw ValidationError("--dtype must be keep, f32, f16 or bf16") }
            if let maxShardSize, ByteSize.parse(maxShardSize) == nil { throw ValidationError("--max-shard-size '\(maxShardSize)' is not a size such as 500MB, 5GB or 2GiB") }
            guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
            if let requantize, !["keep", "nf4", "fp4", "fp8", "int8", "mxfp4"].contains(requantize) { throw ValidationError("--requantize must be keep, nf4, fp4, fp8, int8 or mxfp4") }
            if requantize != nil && keepQuantized { throw ValidationError("give --requantize or --keep-quantized, not both") }
            guard GGUFOutputType(rawValue: ggufType) != nil else {
                throw ValidationError("--gguf-type must be one of \(GGUFOutputType.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            if let splitMaxSize {
                try SplitSize.validate(splitMaxSize)
                guard (output ?? outputTemplate ?? "").hasSuffix(".gguf") else { throw ValidationError("--split-max-size splits a GGUF output: --output must end in .gguf") }
            }
        }

        func run() throws {
            if printRecipe {
                print(Recipe(steps: [recipeStep]).yaml, terminator: "")
                return
            }
            if let assemble {
                let report = try LoRACore.Assemble.run(output: assemble, force: force)
                if json { Render.printJSON(jsonReport(report)) } else { print(text(report)) }
                return
            }
            let selection = try part.map { try PartSelection.parse($0, parts: parts) }
            if let adaptersFrom {
                try runBatch(LoRACore.BatchMerge.jobs(list: adaptersFrom, template: outputTemplate!, part: selection))
                return
            }
            let report = try merge(adapters: adapterArguments.pairs, output: output!, part: selection)
            if json {
                Render.printJSON(jsonReport(report))
            } else {
                print(text(report))
            }
        }

        /// Merges each job's adapter in turn; a failure is reported and the others still run.
        func runBatch(_ jobs: [LoRACore.BatchMerge.Job]) throws {
            // A template pointing nowhere fails once, before any merge, not once per adapter.
            for job in jobs {
                let parent = URL(fileURLWithPath: job.output).deletingLastPathComponent().path
                var isDirectory: ObjCBool = false
                guard FileManager.default.fileExists(atPath: parent, isDirectory: &isDirectory), isDirectory.boolValue else {
                    throw LoRACoreError.invalidRequest("--output-template: the directory \(parent) of \(job.output) does not exist")
                }
            }
            var reports: [JSONValue] = []
            var failed: [String] = []
            for job in jobs {
                do {
                    let report = try merge(adapters: [(try ModelSpecs.resolve(job.adapter), 1)], output: job.output, part: nil)
                    if json { reports.append(jsonReport(report)) } else { print(text(report)) }
                } catch {
                    Render.diagnostic("error: \(Render.escaped(job.adapter)): \(Render.escaped(error.localizedDescription))")
                    failed.append(job.name)
                    if json { reports.append(.object([("adapter", .string(job.adapter)), ("output", .string(job.output)), ("error", .string(error.localizedDescription))])) }
                }
            }
            if json { Render.printJSON(.array(reports)) }
            if !json { print("batch: \(jobs.count - failed.count) of \(jobs.count) adapters merged" + (failed.isEmpty ? "" : "; failed: " + failed.joined(separator: ", "))) }
            if !failed.isEmpty { throw ExitCode.failure }
        }

        /// One merge with this command's options.
        func merge(adapters: [(path: String, weight: Double)], output: String, part: PartSelection?) throws -> MergeReport {
            let resolvedBase = try ModelSpecs.base(base, adapter: adapters[0].path, revision: revision)
            var options = MergeOptions(base: resolvedBase, adapters: adapters, output: output)
            options.part = part
            options.dtype = OutputDType(rawValue: dtype)!
            options.maxShardSize = maxShardSize.flatMap(ByteSize.parse)
            options.targets = try adapterArguments.selector
            options.verify = verify
            options.force = force
            options.durable = !noSync
            options.checksums = checksum
            options.threads = threads
            options.scaleOverride = adapterArguments.scale.override
            options.residualBase = adapterArguments.residualBase
            options.requantize = requantize
            options.keepQuantized = keepQuantized
            options.allowOverflow = allowOverflow
            options.allowEmpty = allowEmpty
            options.ggufType = GGUFOutputType(rawValue: ggufType)!
            options.ggufSplitMaxSize = splitMaxSize.flatMap(GGUFSplit.parseSize)
            let bar: ProgressBar? = !quiet && isatty(2) != 0 ? ProgressBar() : nil
            var callback: (@Sendable (LoRACore.Progress) -> Void)?
            if let bar { callback = { bar.update($0) } }
            let report = try LoRACore.Merge.run(options, progress: callback)
            bar?.finish()
            for o in report.overflowed {
                Render.diagnostic("warning: \(o.tensor): \(o.count) values overflowed the output dtype and were written as ±Inf (--allow-overflow)")
            }
            return report
        }

        /// This command line as a recipe step: every option that differs from its default, in the
        /// order of `--help` (`--threads` is left out: it describes the machine, not the job).
        var recipeStep: Recipe.Step {
            var options: [(key: String, value: Recipe.Step.Value)] = []
            func add(_ key: String, _ value: String?) { if let value { options.append((key, .text(value))) } }
            func flag(_ key: String, _ on: Bool) { if on { options.append((key, .flag(true))) } }
            add("base", base)
            add("revision", revision)
            options.append(("adapter", .list(adapterArguments.adapters)))
            if !adapterArguments.weights.isEmpty { options.append(("weight", .list(adapterArguments.weights.map(Render.number)))) }
            add("targets", adapterArguments.targets)
            add("alpha", adapterArguments.scale.alpha.map(Render.number))
            add("rank", adapterArguments.scale.rank.map(String.init))
            add("scale", adapterArguments.scale.scale.map(Render.number))
            add("output", output)
            add("part", part)
            add("parts", parts.map(String.init))
            if dtype != "keep" { add("dtype", dtype) }
            if let maxShardSize { add("max-shard-size", maxShardSize) }
            flag("verify", verify)
            flag("force", force)
            flag("no-sync", noSync)
            flag("checksum", checksum)
            add("requantize", requantize)
            flag("keep-quantized", keepQuantized)
            if ggufType != "keep" { add("gguf-type", ggufType) }
            add("split-max-size", splitMaxSize)
            flag("allow-overflow", allowOverflow)
            flag("allow-empty", allowEmpty)
            flag("json", json)
            flag("quiet", quiet)
            return Recipe.Step(command: "merge", options: options)
        }

        func text(_ r: MergeReport) -> String {
            var rows: [[String]] = []
            for a in r.adapters { rows.append(["adapter", "\(a.path) (\(a.dialect)), weight \(Render.number(a.weight))"]) }
            rows.append(["merged", "\(r.mergedTensors) tensors: " + r.families.map { "\($0.family) ×\($0.modules) (scale \($0.scales.map(Render.number).joined(separator: ", ")))" }.joined(separator: ", ")])
            if !r.replacedTensors.isEmpty { rows.append(["replaced", r.replacedTensors.joined(separator: ", ")]) }
            rows.append(["copied", "\(r.copiedTensors) tensors unchanged"])
            if !r.skippedModules.isEmpty { rows.append(["skipped", r.skippedModules.joined(separator: ", ")]) }
            rows.append(["dtype", r.outputDTypes.keys.sorted().map { "\($0) ×\(r.outputDTypes[$0]!)" }.joined(separator: ", ")])
            rows.append(["written", "\(Render.bytes(r.bytesWritten)) in \(r.files.count) files, \(String(format: "%.2f", r.seconds)) s, \(String(format: "%.2f", Double(r.bytesWritten) / max(r.seconds, 1e-9) / 1e9)) GB/s"])
            if r.dequantizedBase {
                rows.append(["quantized base", r.requantization != nil ? "dequantized, merged, requantized"
                    : r.keptQuantized ? "merged weights written dense, the others kept 4-bit" : "dequantized exactly; the output is dense"])
            }
            for s in r.requantization ?? [] {
                rows.append(["requantized", "\(s.weight): \(String(format: "%.1f", 100 * s.codesChanged))% of codes changed, delta kept: correlation \(String(format: "%.3f", s.deltaCorrelation)), norm ratio \(String(format: "%.3f", s.deltaNormRatio))"])
            }
            // One warning for all the weights whose change mostly did not survive, naming the worst.
            let weak = (r.requantization ?? []).filter { $0.deltaCorrelation < 0.5 }
            if let worst = weak.min(by: { $0.deltaCorrelation < $1.deltaCorrelation }) {
                let which = weak.count == 1 ? worst.weight : "\(weak.count) of \(r.requantization!.count) requantized weights (lowest: \(worst.weight))"
                Render.diagnostic("warning: \(which): less than half of the adapter's change survived requantization (correlation \(String(format: "%.2f", worst.deltaCorrelation))); consider a dense output (omit --requantize)")
            }
            if let v = r.verification {
                rows.append(["verified", v.mode == .probes
                    ? "\(v.entries.count) merged tensors on \(v.probes) probes (seed \(v.seed)), as computed before requantizing: all pass"
                    : "\(v.entries.count) tensors element by element and on \(v.probes) probes (seed \(v.seed)), side files and metadata: all pass"])
            }
            for f in r.files { rows.append(r.sha256[f].map { ["sha256", "\($0)  \(f)"] } ?? ["file", f]) }
            if let p = r.part {
                rows.append(["part", "\(p.selection) written to \(Render.escaped(p.directory)) (\(r.files.filter { $0.hasSuffix(".safetensors") }.count) of \(p.shards) shards); when every part is done: lora-tool merge --assemble \(Render.escaped(r.output))"])
                return "\(Render.escaped(r.output)): part \(p.selection) merged\n" + Render.table(rows.map { ["  " + $0[0], $0[1]] })
            }
            return "\(Render.escaped(r.output)): merged\n" + Render.table(rows.map { ["  " + $0[0], $0[1]] })
        }

        func text(_ r: AssembleReport) -> String {
            var rows = [["assembled", "\(r.parts) parts, \(r.files.count) files, \(Render.bytes(r.bytes))"]]
            for f in r.files { rows.append(["sha256", "\(r.sha256[f] ?? "?")  \(f)"]) }
            return "\(Render.escaped(r.output)): assembled\n" + Render.table(rows.map { ["  " + $0[0], $0[1]] })
        }

        func jsonReport(_ r: AssembleReport) -> JSONValue {
            .object([
                ("output", .string(r.output)),
                ("parts", Render.json(r.parts)),
                ("files", Render.json(r.files)),
                ("sha256", .object(r.files.map { ($0, r.sha256[$0].map(JSONValue.string) ?? .null) })),
                ("bytes", Render.json(r.bytes)),
            ])
        }

        func jsonReport(_ r: MergeReport) -> JSONValue {
            .object([
                ("output", .string(r.output)),
                ("files", Render.json(r.files)),
                // null without --checksum, as "part" without --part and "verified" without --verify.
                ("sha256", r.sha256.isEmpty ? .null : .object(r.files.map { ($0, r.sha256[$0].map(JSONValue.string) ?? .null) })),
                ("adapters", .array(r.adapters.map { .object([("path", .string($0.path)), ("dialect", .string($0.dialect)), ("weight", Render.json($0.weight))]) })),
                ("families", .object(r.families.map { ($0.family, .object([("modules", Render.json($0.modules)), ("scales", .array($0.scales.map(Render.json)))])) })),
                ("merged_tensors", Render.json(r.mergedTensors)),
                ("replaced_tensors", Render.json(r.replacedTensors)),
                ("copied_tensors", Render.json(r.copiedTensors)),
                ("skipped_modules", Render.json(r.skippedModules)),
                ("dtypes", .object(r.outputDTypes.keys.sorted().map { ($0, Render.json(r.outputDTypes[$0]!)) })),
                ("bytes_written", Render.json(r.bytesWritten)),
                ("seconds", Render.json(r.seconds)),
                ("part", r.part.map { .string($0.selection.description) } ?? .null),
                ("verified", r.verification.map { .bool($0.passed) } ?? .null),
                ("dequantized_base", .bool(r.dequantizedBase)),
                ("overflowed", .object(r.overflowed.map { ($0.tensor, Render.json($0.count)) })),
                ("requantization", r.requantization.map { list in .array(list.map {
                    .object([("weight", .string($0.weight)), ("codes_changed", Render.json($0.codesChanged)),
                             ("delta_correlation", Render.json($0.deltaCorrelation)), ("delta_norm_ratio", Render.json($0.deltaNormRatio))])
                }) } ?? .null),
            ])
        }
    }
}

/// A one-line progress bar on stderr: tensors, bytes, rate, ETA.
final class ProgressBar: @unchecked Sendable {
    // @unchecked: updates are serialized by `lock` (they come from the merge's workers).
    private let lock = NSLock()
    private var start = Date()
    private var last = Date.distantPast
    private var phase: String?

    func update(_ p: LoRACore.Progress) {
        lock.lock()
        defer { lock.unlock() }
        let now = Date()
        if p.phase != phase {
            // A new phase (resolving scales, then writing): its own line, its own rate.
            if phase != nil { FileHandle.standardError.write(Data("\n".utf8)) }
            phase = p.phase
            start = now
            last = .distantPast
        }
        guard now.timeIntervalSince(last) > 0.1 || p.tensorsDone == p.tensorsTotal else { return }
        last = now
        let elapsed = now.timeIntervalSince(start)
        let rate = Double(p.bytesDone) / max(elapsed, 1e-6)
        let eta = rate > 0 ? Double(p.bytesTotal - p.bytesDone) / rate : 0
        let frac = p.bytesTotal > 0 ? Double(p.bytesDone) / Double(p.bytesTotal) : 1
        let filled = Int(frac * 30)
        let line = (p.phase.map { "\r" + $0 + ": " } ?? "\r") + String(format: "[%@%@] %d/%d tensors  %@/%@  %@/s  ETA %.0fs ",
                          String(repeating: "#", count: filled), String(repeating: " ", count: 30 - filled),
                          p.tensorsDone, p.tensorsTotal, Render.bytes(p.bytesDone), Render.bytes(p.bytesTotal), Render.bytes(Int(rate)), eta)
        FileHandle.standardError.write(Data(line.utf8))
    }

    func finish() { FileHandle.standardError.write(Data("\n".utf8)) }
}
