import ArgumentParser
import Foundation
import LoRACore
import LoRAGraph
import LoRAKernels
import SafeTensors

extension LoraTool {
    /// `lora-tool extract`: adapters out of training checkpoints, or out of fine-tunes by SVD.
    struct Extract: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Extract a PEFT adapter from a training checkpoint, or from (base, fine-tuned) by SVD.",
            discussion: """
                With --checkpoint: the adapter tensors of a PEFT-wrapped model's state_dict() (keys with \
                .lora_A.<name>., .modules_to_save.<name>., ...), written exactly as PEFT's save_pretrained \
                writes them, with an adapter_config.json PEFT loads; --base-output also writes the base \
                half as a model directory. With --base and --finetuned: ΔW = W_ft − W_base per target \
                module, truncated SVD, A = √S·Vᵀ and B = U·√S, lora_alpha = r (scale 1). Between two image \
                models of one family (two diffusers pipeline folders, two unet/, transformer/ or text_encoder/ \
                folders, two SD 1.x/2.x/SDXL single files or two Flux BFL single files): sd-scripts' targets (UNet \
                attention blocks, text-encoder attention and MLP, Flux double and single blocks in BFL names; \
                convolutions with --conv-rank), written as a kohya file \
                (--output x.safetensors) or with --format diffusers.
                """)

        @Option(help: "Training checkpoint holding base and adapter tensors (file, index or directory).")
        var checkpoint: String?

        @Option(help: "With --checkpoint: which adapter, when it holds several.")
        var adapterName: String?

        @Option(help: "With --checkpoint: lora_alpha (else read from adapter_config.json beside the checkpoint).")
        var alpha: Double?

        @Option(help: "With --checkpoint: also write the base half here, as a model directory.")
        var baseOutput: String?

        @Option(help: "Base model (SVD mode).")
        var base: String?

        @Option(help: "Fine-tuned model (SVD mode).")
        var finetuned: String?

        @Option(help: "SVD mode: keep this rank per module (capped by the matrix's own rank).")
        var rank: Int?

        @Option(help: "SVD mode: keep the smallest rank holding this fraction of ‖ΔW‖² (0 < P ≤ 1).")
        var energy: Double?

        @Option(help: "SVD mode with --energy: the largest rank to keep.")
        var maxRank: Int?

        @Option(help: "SVD mode: modules to decompose (suffixes; default the seven projections).")
        var targets: String?

        @Option(help: "SVD mode: skip modules whose ‖ΔW‖/‖W‖ is at most this (default 0). Image models: leave the text encoders out when no |ΔW| element exceeds this (sd-scripts' --min_diff, default 0.01).")
        var minDiff: Double?

        @Option(help: "SVD mode, image models: also extract the resnets' and samplers' convolutions, k×k ones at this rank (sd-scripts' --conv_dim).")
        var convRank: Int?

        @Option(help: "SVD mode, image models: kohya (sd-scripts names, .alpha; the default) or diffusers (lora_adapter_metadata).")
        var format: ImageExtractFormat?

        @Option(help: "SVD mode: power iterations of the randomized SVD (each one more pass over ΔW; 2 comes closer to the optimal error on slowly decaying spectra).")
        var powerIterations: Int = 1

        @Option(help: "Output adapter directory.")
        var output: String

        @OptionGroup var compression: ZstdArguments

        @Flag(help: "Replace existing outputs that lora-tool wrote (directories carrying the .lora-tool marker); anything else is never replaced.")
        var force = false

        @Flag(help: "Print the report as JSON.")
        var json = false

        func validate() throws {
            try OutputPathCheck.validate(output, option: "--output")
            try OutputPathCheck.validate(baseOutput, option: "--base-output")
            if checkpoint != nil {
                guard base == nil, finetuned == nil, rank == nil, energy == nil else {
                    throw ValidationError("--checkpoint cannot be combined with --base/--finetuned/--rank/--energy")
                }
                if let alpha, !alpha.isFinite { throw ValidationError("--alpha must be a finite number") }
            } else {
                guard base != nil, finetuned != nil else { throw ValidationError("give --checkpoint, or --base and --finetuned") }
                try RankRule.validate(rank: rank, energy: energy, maxRank: maxRank)
                if let maxRank, maxRank <= 0 { throw ValidationError("--max-rank must be positive") }
                if let convRank, convRank <= 0 { throw ValidationError("--conv-rank must be positive") }
                if let minDiff, !(minDiff >= 0) { throw ValidationError("--min-diff must be a number ≥ 0") }
                guard (0...8).contains(powerIterations) else { throw ValidationError("--power-iterations must be 0 to 8") }
                if let targets { _ = try TargetSelector(parsing: targets) }
            }
        }

        func run() throws {
            if let checkpoint {
                var o = ExtractCheckpointOptions(checkpoint: checkpoint, output: output)
                o.adapterName = adapterName
                o.alpha = alpha
                o.baseOutput = baseOutput
                o.force = force
                o.zstdLevel = compression.level
                let r = try ExtractCheckpoint.run(o)
                if json {
                    Render.printJSON(.object([
                        ("output", .string(output)), ("adapter_name", .string(r.adapterName)), ("modules", Render.json(r.modules)),
                        ("ranks", .array(r.ranks.map { Render.json($0) })), ("lora_alpha", Render.json(r.alpha)),
                        ("alpha_source", .string(r.alphaSource)), ("target_modules", Render.json(r.targetModules)),
                        ("use_dora", .bool(r.dora)), ("modules_to_save", Render.json(r.modulesToSave)),
                        ("adapter_tensors", Render.json(r.adapterTensors)),
                        ("base_output", baseOutput.map { .string($0) } ?? .null), ("base_tensors", r.baseTensors.map { Render.json($0) } ?? .null),
                    ]))
                } else {
                    var rows = [
                        ["adapter", "'\(r.adapterName)': \(r.modules) modules, rank \(r.ranks.map(String.init).joined(separator: ", ")), alpha \(Render.number(r.alpha)) (from \(r.alphaSource))"],
                        ["targets", r.targetModules.joined(separator: ", ")],
                        ["DoRA", r.dora ? "yes" : "no"],
                        ["written", "\(r.adapterTensors) tensors"],
                    ]
                    if !r.modulesToSave.isEmpty { rows.append(["modules_to_save", r.modulesToSave.joined(separator: ", ")]) }
                    if let b = r.baseTensors, let baseOutput { rows.append(["base", "\(baseOutput): \(b) tensors"]) }
                    print(Render.escaped("\(output): adapter extracted from \(checkpoint)") + "\n" + Render.table(rows.map { ["  " + $0[0], $0[1]] }))
                }
                return
            }
            var o = ExtractSVDOptions(base: try ModelSpecs.resolve(base!), finetuned: try ModelSpecs.resolve(finetuned!), output: output, rule: RankRule.rule(rank: rank, energy: energy, maxRank: maxRank))
            o.targets = try targets.map { try TargetSelector(parsing: $0) }
            o.minDiff = minDiff
            o.convRank = convRank
            o.imageFormat = format.map { $0 == .kohya ? .kohya : .diffusers }
            o.powerIterations = powerIterations
            o.force = force
            o.zstdLevel = compression.level
            let r = try ExtractSVD.run(o)
            if json {
                Render.printJSON(.object([
                    ("output", .string(output)),
                    ("modules", .array(r.modules.map {
                        .object([("module", .string($0.module)), ("rank", Render.json($0.rank)), ("energy_kept", Render.json($0.energyKept)),
                                 ("relative_error", Render.json($0.relativeError)), ("method", .string($0.method))])
                    })),
                    ("skipped", .array(r.skipped.map { .object([("module", .string($0.module)), ("relative_difference", Render.json($0.relativeDifference))]) })),
                    ("notes", .array(r.notes.map { .string($0) })),
                    ("other_differences", .array(r.otherDifferences.map { .object([("tensor", .string($0.tensor)), ("relative_difference", Render.json($0.relativeDifference))]) })),
                    ("blas_core", .string(BLASCore.name)),
                ]))
                return
            }
            print("\(Render.escaped(output)): adapter extracted by SVD (OpenBLAS core \(BLASCore.name))\n" + Render.table(Render.svdModules(r.modules)))
            for note in r.notes { Render.diagnostic("note: " + note) }
            for s in r.skipped {
                Render.diagnostic(s.relativeDifference == 0
                    ? "note: \(s.module) skipped: unchanged (ΔW = 0, or left out as the note above says)"
                    : "note: \(s.module) skipped: no difference above --min-diff (relative \(String(format: "%.3g", s.relativeDifference)))")
            }
            for d in r.otherDifferences {
                Render.diagnostic("warning: \(d.tensor) differs between the models (relative \(String(format: "%.3g", d.relativeDifference))) but is not a target; it is not in the adapter")
            }
        }
    }
}


/// `extract --format`: the LoRA format written for image models.
enum ImageExtractFormat: String, ExpressibleByArgument, CaseIterable {
    case kohya, diffusers
}
