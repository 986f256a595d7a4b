import ArgumentParser
import Foundation
import GGUF
import LoRACore

extension LoraTool {
    /// `lora-tool convert`: an adapter in another dialect, same merged weights.
    struct Convert: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Rewrite an adapter as PEFT, kohya, mlx-lm or llama.cpp GGUF, with the scale translated exactly.",
            discussion: """
                Reads any dialect inspect understands (PEFT LoRA/rsLoRA/DoRA/AdaLoRA, kohya, mlx-lm) and \
                writes the same ΔW = s·B·A per module: PEFT with α = s·r (alpha_pattern where modules \
                differ), kohya with a per-module alpha = s·r (OUTPUT ending in .safetensors writes one \
                file), mlx-lm with one scale. What the target cannot express (DoRA in kohya, embedding or \
                Conv1D LoRA outside PEFT, mixed ranks in mlx) is refused with the reason. kohya input \
                needs --base to recover module paths.

                Image models: a diffusers-format SD 1.x/2.x or Flux LoRA converts --to kohya (sd-scripts' \
                names, each module's alpha; Flux q/k/v parts joined into BFL's fused modules when they \
                share lora_A), an SDXL one with its diffusers pipeline folder as --base (sgm UNet names, \
                lora_te1_/lora_te2_); a kohya or LyCORIS LoRA converts --to diffusers with its diffusers \
                pipeline or component folder as --base (pytorch_lora_weights.safetensors, alpha/r per \
                component in lora_adapter_metadata; Flux fused modules split exactly).

                An adapter trained on PEFT's residual model (init_lora_weights pissa, olora, corda or \
                lora_ga) is a LoRA of that residual model, not of the original: --initial \
                INITIAL_ADAPTER (the adapter PEFT saved at initialisation) makes it one of the original \
                model, as PEFT's path_initial_model_for_weight_conversion does (rank and alpha doubled), \
                keeping what PEFT's conversion drops (embedding LoRA, DoRA magnitudes). Without it, merge \
                such an adapter into the residual model with merge --residual-base.

                LoHa and LoKr convert between LyCORIS files (--to kohya: kohya names, hada_*/lokr_*, alpha) and \
                PEFT LOHA/LOKR adapters (--to peft; a LyCORIS input needs --base): the factors are copied \
                unchanged and each module's scale kept (a LyCORIS LoKr with both halves full, scale 1, gets \
                α = r in PEFT; a PEFT one with α/r ≠ 1 cannot be written as LyCORIS and is refused), with \
                decompose_both, decompose_factor and use_effective_conv2d set so that PEFT builds the stored shapes. \
                Tucker cores convert too; LyCORIS DoRA (dora_scale) and LyCORIS LoCon modules are rewritten as \
                LyCORIS only.

                --to lora writes any additive adapter (LoHa, LoKr, VeRA, FourierFT, LoRA; IA³ as W ⊙ l − W, OFT \
                and BOFT as W' − W, with --base) as plain PEFT LoRA with scale 1: each module's ΔW, computed as \
                merge computes it, factored by truncated SVD (--svd-rank R, or --energy P [--max-rank M]), with \
                each module's relative error reported. VeRA, FourierFT, IA³, OFT and BOFT need --base, and so \
                do Conv2d and Conv1d modules (written as PEFT's conv LoRA, A (r, in, kh, kw), B (out, r, 1, 1); \
                Conv1d: A (r, in, k), B (out, r, 1)).

                --to gguf-lora writes the adapter GGUF llama.cpp loads (llama-cli --lora, \
                llama-export-lora), as convert_lora_to_gguf.py lays it out, for llama (Mistral), qwen2, \
                qwen3, gemma, gemma2, gemma3 and phi3: --base is the GGUF model or the transformers \
                directory (config.json) it is for; \
                q/k rows in llama.cpp's rope order; every module at its own scale (adapter.lora.alpha = \
                s·r when all modules agree, else 0 with each B multiplied by its s, which rsLoRA with \
                mixed ranks and alpha_pattern need); --gguf-type f32 (default), f16, bf16 or q8_0.

                --to gguf writes a transformers model (the argument is then its directory; no adapter) \
                as the GGUF model llama.cpp's convert_hf_to_gguf.py writes, for LlamaForCausalLM, \
                MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Gemma(2,3)ForCausalLM and Phi3ForCausalLM with a SentencePiece \
                tokenizer.model, a Llama 2 style or a byte-level BPE tokenizer.json: the converter's metadata, tokenizer and \
                tensors (q/k rows in rope order, norms and biases F32); --gguf-type f16 (default), f32, \
                bf16 or q8_0. `merge --base MODEL_DIR --output X.gguf` does the same with adapters merged.
                """)

        @Argument(help: "Adapter directory or file (with --to gguf: the transformers model directory).")
        var adapter: String

        @Option(help: "Target dialect: peft, kohya (for LoHa/LoKr: a LyCORIS file), mlx, diffusers, gguf-lora, or lora (any additive type as plain LoRA by SVD); or gguf (a transformers model as a GGUF model).")
        var to: String

        @Option(help: "Output directory (or a .safetensors file for kohya, a .gguf file for gguf-lora and gguf).")
        var output: String

        @Option(help: "Base model: resolves kohya names and gives exact PEFT target_modules; for gguf-lora the GGUF model or transformers directory the adapter is for.")
        var base: String?

        @Option(help: ArgumentHelp("With --to peft, kohya or mlx, for an adapter trained on PEFT's residual model (init_lora_weights pissa, olora, corda, lora_ga): the adapter PEFT saved at initialisation; the output is then a LoRA of the original model (A' = [A; A₀], B' = [B, −B₀]).", valueName: "INITIAL_ADAPTER"))
        var initial: String?

        @Option(name: .customLong("gguf-type"), help: "With --to gguf-lora: the factors' type, f32 (default), f16, bf16 or q8_0; with --to gguf: the weights' type, f16 (default), f32, bf16 or q8_0 (rows that are not whole Q8_0 blocks as f16).")
        var ggufType: String?

        @Option(name: .customLong("svd-rank"), help: "With --to lora: keep this rank per module (capped by the matrix's own rank).")
        var svdRank: Int?

        @Option(help: "With --to lora: keep the smallest rank holding this fraction of ‖ΔW‖² (0 < P ≤ 1).")
        var energy: Double?

        @Option(name: .customLong("max-rank"), help: "With --to lora --energy: the largest rank to keep.")
        var maxRank: Int?

        @Option(help: ArgumentHelp("With --to gguf: write llama.cpp's split model (X-00001-of-00003.gguf and so on), each shard holding at most SIZE bytes of tensors (a number, or with K, M or G: powers of 1000), as convert_hf_to_gguf.py --split-max-size does; a model that fits is one file.", valueName: "SIZE"))
        var splitMaxSize: String?

        @Flag(name: .customLong("no-sync"), help: "With --to gguf-lora or gguf: do not fsync the output (faster; a crash may leave it incomplete, never under its final name).")
        var noSync = false

        @Flag(help: "With --to gguf-lora or gguf: report the output's SHA-256 (as sha256sum prints it), computed while it is written.")
        var checksum = false

        @OptionGroup var compression: ZstdArguments

        @OptionGroup var scale: ScaleArguments

        @Flag(help: "Replace an existing output that lora-tool wrote (a directory carrying the .lora-tool marker, or a safetensors file); anything else is never replaced.")
        var force = false

        func validate() throws {
            try OutputPathCheck.validate(output, option: "--output")
            guard ["peft", "kohya", "mlx", "diffusers", "gguf-lora", "lora", "gguf"].contains(to) else { throw ValidationError("--to must be peft, kohya, mlx, diffusers, gguf-lora, lora or gguf") }
            if to == "lora" {
                guard (svdRank == nil) != (energy == nil) else { throw ValidationError("--to lora needs exactly one of --svd-rank and --energy") }
                try RankRule.validate(rank: svdRank, energy: energy, maxRank: maxRank)
                if let maxRank, maxRank <= 0 { throw ValidationError("--max-rank must be positive") }
            } else if svdRank != nil || energy != nil || maxRank != nil {
                throw ValidationError("--svd-rank, --energy and --max-rank apply to --to lora only")
            }
            if to != "gguf" && splitMaxSize != nil { throw ValidationError("--split-max-size applies to --to gguf only") }
            if initial != nil && !["peft", "kohya", "mlx"].contains(to) { throw ValidationError("--initial applies to --to peft, kohya and mlx (convert the result further afterwards)") }
            if to == "gguf" {
                guard output.hasSuffix(".gguf") else { throw ValidationError("--to gguf writes a GGUF file: --output must end in .gguf") }
                if let splitMaxSize { try SplitSize.validate(splitMaxSize) }
                if base != nil { throw ValidationError("--to gguf converts the model given as the argument: --base does not apply") }
                if let ggufType, !["f32", "f16", "bf16", "q8_0"].contains(ggufType) {
                    throw ValidationError("--gguf-type must be f32, f16, bf16 or q8_0 for a model written as convert_hf_to_gguf.py writes it")
                }
                if compression.level != nil { throw ValidationError("--zstd does not apply to a GGUF output") }
                if scale.override != AdapterScaleOverride() { throw ValidationError("--alpha and --rank apply to adapters, not to --to gguf") }
            } else if to == "gguf-lora" {
                guard base != nil else { throw ValidationError("--to gguf-lora needs --base: the GGUF model or transformers directory the adapter is for") }
                if let ggufType, !["f32", "f16", "bf16", "q8_0"].contains(ggufType) {
                    throw ValidationError("--gguf-type must be f32, f16, bf16 or q8_0 for an adapter")
                }
                if compression.level != nil { throw ValidationError("--zstd does not apply to a GGUF output") }
            } else {
                if ggufType != nil { throw ValidationError("--gguf-type applies to --to gguf-lora and gguf only") }
                if noSync { throw ValidationError("--no-sync applies to --to gguf-lora and gguf only") }
                if checksum { throw ValidationError("--checksum applies to --to gguf-lora and gguf only") }
            }
        }

        func run() throws {
            if to == "gguf-lora" { return try convertToGGUF() }
            if to == "gguf" { return try convertModelToGGUF() }
            if to == "lora" { return try convertToLoRA() }
            var o = ConvertOptions(adapter: try ModelSpecs.resolve(adapter), to: Adapter.Format(rawValue: to)!, output: output)
            o.base = try base.map { try ModelSpecs.resolve($0) }
            o.initial = try initial.map { try ModelSpecs.resolve($0) }
            o.force = force
            o.zstdLevel = compression.level
            o.scaleOverride = scale.override
            let r = try LoRACore.Convert.run(o)
            var rows = [["from", r.from], ["to", r.to], ["modules", "\(r.modules), scales \(r.scales.map(Render.number).joined(separator: ", "))"]]
            for n in r.notes { rows.append(["note", n]) }
            print("\(Render.escaped(output)): converted\n" + Render.table(rows.map { ["  " + $0[0], $0[1]] }))
        }

        private func convertToLoRA() throws {
            var o = ConvertToLoRAOptions(adapter: try ModelSpecs.resolve(adapter), output: output, rule: RankRule.rule(rank: svdRank, energy: energy, maxRank: maxRank))
            o.base = try base.map { try ModelSpecs.resolve($0) }
            o.force = force
            o.zstdLevel = compression.level
            o.scaleOverride = scale.override
            let r = try ConvertToLoRA.run(o)
            var rows = Render.svdModules(r.modules)
            for s in r.skipped { rows.append(["  " + s.module, "–", "ΔW = 0, skipped", "", ""]) }
            print("\(Render.escaped(output)): converted to plain LoRA (scale 1)\n" + Render.table(rows))
        }

        /// `--to gguf`: the export of `merge --base MODEL --output X.gguf` with no adapter.
        private func convertModelToGGUF() throws {
            var o = MergeOptions(base: try ModelSpecs.resolve(adapter), adapters: [], output: output)
            o.allowEmpty = true
            o.ggufType = GGUFOutputType(rawValue: ggufType ?? "f16")!
            o.ggufSplitMaxSize = splitMaxSize.flatMap(GGUFSplit.parseSize)
            o.force = force
            o.durable = !noSync
            o.checksums = checksum
            let r = try LoRACore.Merge.run(o)
            let rows = [["to", "llama.cpp GGUF model"], ["tensors", "\(r.outputDTypes.values.reduce(0, +))"],
                        ["types", r.outputDTypes.sorted { $0.key < $1.key }.map { "\($0.key) ×\($0.value)" }.joined(separator: ", ")]]
                + r.files.map { f in r.sha256[f].map { ["sha256", "\($0)  \(f)"] } ?? ["file", f] }
            print("\(Render.escaped(output)): converted\n" + Render.table(rows.map { ["  " + $0[0], $0[1]] }))
        }

        private func convertToGGUF() throws {
            var o = ConvertToGGUFOptions(adapter: try ModelSpecs.resolve(adapter), output: output, base: try ModelSpecs.resolve(base!))
            o.type = GGMLType.allCases.first { $0.name.lowercased() == (ggufType ?? "f32") }!
            o.force = force
            o.durable = !noSync
            o.checksums = checksum
            o.scaleOverride = scale.override
            let r = try ConvertToGGUF.run(o)
            var rows = [["from", r.from], ["to", "llama.cpp LoRA GGUF (\(r.architecture))"],
                        ["modules", "\(r.modules), adapter.lora.alpha \(Render.number(Double(r.alpha)))\(r.folded ? " (scales in B)" : "")"],
                        ["types", r.types.sorted { $0.key < $1.key }.map { "\($0.key) ×\($0.value)" }.joined(separator: ", ")]]
            if let sha256 = r.sha256 { rows.append(["sha256", "\(sha256)  \(URL(fileURLWithPath: output).lastPathComponent)"]) }
            for n in r.notes { rows.append(["note", n]) }
            print("\(Render.escaped(output)): converted\n" + Render.table(rows.map { ["  " + $0[0], $0[1]] }))
        }
    }
}
