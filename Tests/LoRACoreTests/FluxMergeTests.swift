import Foundation
import Testing
@testable import LoRACore
@testable import SafeTensors

@Suite("Image models: Flux transformer folders, pipelines and BFL single files with kohya and diffusers LoRAs")
struct FluxMergeTests {
    static let oracle = flux + "/merged/diffusion_pytorch_model.safetensors"

    @Test("transformer/ × the kohya file equals diffusers' fuse (fp32, rounded once to bf16) within 1 ulp, 44 tensors merged, the same bytes as the diffusers file")
    func kohyaIntoTransformer() throws {
        let dir = temporaryDirectory()
        let report = try mergeImageModel(fluxTransformer, [flux + "/kohya.safetensors"], into: dir + "/k")
        // 30 kohya modules: 4 fused qkv → 12, 2 linear1 → 8, 24 one to one = 44 diffusers modules.
        #expect(report.mergedTensors == 44)
        #expect(report.files.sorted() == ["config.json", "diffusion_pytorch_model.safetensors"])
        #expect(try worstUlps(dir + "/k/diffusion_pytorch_model.safetensors", Self.oracle) <= 1)
        _ = try mergeImageModel(fluxTransformer, [flux + "/lora"], into: dir + "/d")
        #expect(try worstUlps(dir + "/d/diffusion_pytorch_model.safetensors", Self.oracle) <= 1)
        #expect(FileManager.default.contents(atPath: dir + "/k/diffusion_pytorch_model.safetensors")
            == FileManager.default.contents(atPath: dir + "/d/diffusion_pytorch_model.safetensors"))
    }

    @Test("A fused kohya module splits into diffusers modules sharing A, each with its rows of B and the module's alpha/r")
    func fusedModulesSplit() throws {
        let kohya = try Adapter(path: flux + "/kohya.safetensors")
        let view = try DiffusersComponent.view(of: kohya, for: "transformer", available: ["transformer"], base: try Checkpoint(path: fluxTransformer))
        let linear1 = view.modules.filter { $0.module.hasPrefix("single_transformer_blocks.0.") && $0.bRows != nil }
        #expect(linear1.map(\.module) == ["single_transformer_blocks.0.attn.to_q", "single_transformer_blocks.0.attn.to_k",
                                          "single_transformer_blocks.0.attn.to_v", "single_transformer_blocks.0.proj_mlp"])
        #expect(linear1.map(\.bRows) == [[0..<16], [16..<32], [32..<48], [48..<112]])
        #expect(linear1.map(\.outFeatures) == [16, 16, 16, 64])
        #expect(Set(linear1.map(\.aName)) == ["lora_unet_single_blocks_0_linear1.lora_down.weight"])
        #expect(Set(linear1.map(\.scale)) == [1.5])
        let norm = view.modules.first { $0.module == "norm_out.linear" }
        #expect(norm?.bRows == [16..<32, 0..<16] && norm?.scale == 1.5)
        #expect(view.modules.count == 44)
    }

    @Test("A Flux pipeline folder takes the kohya file's lora_unet_ modules into transformer/; other files byte for byte")
    func pipelineFolder() throws {
        let dir = temporaryDirectory(), pipeline = dir + "/pipeline"
        try FileManager.default.createDirectory(atPath: pipeline, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: fluxTransformer, toPath: pipeline + "/transformer")
        let index = #"{"_class_name": "FluxPipeline", "_diffusers_version": "0.42.1", "transformer": ["diffusers", "FluxTransformer2DModel"]}"#
        try Data(index.utf8).write(to: URL(fileURLWithPath: pipeline + "/model_index.json"))
        #expect(ImageModelFamily.of(directory: pipeline)?.name == "flux")
        let report = try mergeImageModel(pipeline, [flux + "/kohya.safetensors"], into: dir + "/out")
        #expect(report.mergedTensors == 44)
        #expect(try worstUlps(dir + "/out/transformer/diffusion_pytorch_model.safetensors", Self.oracle) <= 1)
        #expect(FileManager.default.contents(atPath: dir + "/out/model_index.json") == Data(index.utf8))
        var v = VerifyOptions(base: pipeline, adapters: [(flux + "/kohya.safetensors", 1)], merged: dir + "/out")
        v.threads = 2
        #expect(try Verify.run(v).passed)
    }

    @Test("verify passes the expected merge (merged/) and names the tensor of a changed element")
    func verifyTransformer() throws {
        var v = VerifyOptions(base: fluxTransformer, adapters: [(flux + "/kohya.safetensors", 1)], merged: flux + "/merged")
        v.threads = 2
        let report = try Verify.run(v)
        #expect(report.passed)
        let dir = temporaryDirectory() + "/changed"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: flux + "/merged/config.json", toPath: dir + "/config.json")
        let tensor = "single_transformer_blocks.1.proj_mlp.weight"
        try rewriteSafeTensors(Self.oracle, to: dir + "/diffusion_pytorch_model.safetensors", metadata: try Checkpoint(path: Self.oracle).metadata, flip: tensor)
        v.merged = dir
        #expect(try Verify.run(v).failures.map(\.tensor) == [tensor])
    }

    @Test("inspect: the kohya and diffusers files are flux LoRAs targeting the transformer; transformer/ and single.safetensors are flux")
    func inspectFamilies() throws {
        for (file, dialect, modules) in [("kohya.safetensors", "kohya LoRA (sd-scripts)", 30), ("lora", "diffusers LoRA", 44)] {
            let report = try Inspect.run(path: flux + "/" + file)
            #expect(report.adapter?.dialect == dialect)
            #expect(report.imageModel?.family?.name == "flux")
            #expect(report.imageModel?.targets.map(\.component) == ["transformer"])
            #expect(report.imageModel?.targets.map(\.modules) == [modules])
            #expect(report.imageModel?.targets.first?.ranks == [2, 4])
        }
        #expect(try Inspect.run(path: fluxTransformer).imageModel?.family?.name == "flux")
        // With a CLIP-L module (sd-scripts' Flux LoRAs name it lora_te1_): still flux, its module targets text_encoder.
        let withClip = temporaryDirectory() + "/te1.safetensors"
        try rewriteTensors(flux + "/kohya.safetensors", to: withClip, rename: { $0.replacingOccurrences(of: "lora_unet_img_in", with: "lora_te1_text_model_encoder_layers_0_mlp_fc1") })
        let report = try Inspect.run(path: withClip)
        #expect(report.imageModel?.family?.name == "flux")
        #expect(report.imageModel?.targets.map(\.component) == ["text_encoder", "transformer"] && report.imageModel?.targets.map(\.modules) == [1, 29])
    }

    @Test("inspect --base: the kohya file against transformer/ lists its 44 diffusers modules, against the single file its 30 BFL modules; the diffusers file against the single file its 44 modules as 45 BFL updates (norm_out's halves two), no problem")
    func inspectAgainstBases() throws {
        let kohya = flux + "/kohya.safetensors"
        let transformer = try Inspect.run(path: kohya, base: fluxTransformer)
        #expect(transformer.base?.problems == [] && transformer.adapter?.modules.count == 44)
        #expect(transformer.adapter?.modules.contains { $0.module == "single_transformer_blocks.1.proj_mlp" && $0.scale == 1 } == true)
        let single = try Inspect.run(path: kohya, base: fluxSingle)
        #expect(single.base?.problems == [] && single.adapter?.modules.count == 30)
        let diffusers = try Inspect.run(path: flux + "/lora", base: fluxSingle)
        #expect(diffusers.base?.problems == [] && diffusers.adapter?.modules.count == 45)
        let names = diffusers.adapter?.modules.map(\.module) ?? []
        #expect(names.contains("single_blocks.0.linear1.proj_mlp") && names.contains("final_layer.adaLN_modulation.1.shift") && names.contains("img_in"))
    }

    @Test("A kohya Flux module whose lora_up rows are not its BFL module's, or that names no module, is refused by name")
    func refusals() throws {
        let dir = temporaryDirectory()
        // single_blocks_0_linear1's up factor given to img_attn_qkv (112 rows where q, k, v have 48).
        try rewriteTensors(flux + "/kohya.safetensors", to: dir + "/rows.safetensors",
                           keep: { $0.hasPrefix("lora_unet_single_blocks_0_linear1.") },
                           rename: { $0.replacingOccurrences(of: "single_blocks_0_linear1", with: "double_blocks_0_img_attn_qkv") })
        #expect {
            try mergeImageModel(fluxTransformer, [dir + "/rows.safetensors"], into: dir + "/out1")
        } throws: { error in
            let text = "\(error)"
            return text.contains("lora_unet_double_blocks_0_img_attn_qkv") && text.contains("112 rows") && text.contains("48")
        }
        try rewriteTensors(flux + "/kohya.safetensors", to: dir + "/name.safetensors",
                           keep: { $0.hasPrefix("lora_unet_img_in.") }, rename: { $0.replacingOccurrences(of: "img_in", with: "img_out") })
        #expect {
            try mergeImageModel(fluxTransformer, [dir + "/name.safetensors"], into: dir + "/out2")
        } throws: { error in "\(error)".contains("lora_unet_img_out") && "\(error)".contains("no base module matches") }
        #expect(!FileManager.default.fileExists(atPath: dir + "/out1") && !FileManager.default.fileExists(atPath: dir + "/out2"))
    }

    @Test("A LyCORIS LoHa on a one-to-one BFL module (img_in) merges into transformer/ as into the single file, the same bytes; on a fused one (img_attn_qkv) its parts are the single file's rows")
    func lycorisModules() throws {
        let dir = temporaryDirectory()
        func values(_ n: Int, _ seed: Float) -> [Float] { (0..<n).map { Float(($0 * 7 + Int(seed * 13)) % 11) / 40 - 0.12 } }
        var tensors: [(String, [Int], [Float])] = []
        for (module, out, inp) in [("lora_unet_img_in", 16, 8), ("lora_unet_double_blocks_0_img_attn_qkv", 48, 16)] {
            tensors += [(module + ".hada_w1_a", [out, 2], values(out * 2, 1)), (module + ".hada_w1_b", [2, inp], values(2 * inp, 2)),
                        (module + ".hada_w2_a", [out, 2], values(out * 2, 3)), (module + ".hada_w2_b", [2, inp], values(2 * inp, 4)),
                        (module + ".alpha", [], [3])]
        }
        try ChunkedMergeTests.write(tensors.filter { $0.0.hasPrefix("lora_unet_img_in.") }, to: dir + "/img_in.safetensors")
        try ChunkedMergeTests.write(tensors, to: dir + "/both.safetensors")
        _ = try mergeImageModel(fluxTransformer, [dir + "/img_in.safetensors"], into: dir + "/t")
        _ = try mergeImageModel(fluxSingle, [dir + "/img_in.safetensors"], into: dir + "/s.safetensors")
        let t = try Checkpoint(path: dir + "/t"), single = try Checkpoint(path: dir + "/s.safetensors"), base = try Checkpoint(path: fluxTransformer)
        #expect(Array(try t.bytes(of: "x_embedder.weight")) == Array(try single.bytes(of: "img_in.weight")))
        #expect(Array(try t.bytes(of: "x_embedder.weight")) != Array(try base.bytes(of: "x_embedder.weight")))
        // On the fused one each diffusers part takes its rows of ΔW: the single file's rows (FluxFusedLycorisTests).
        _ = try mergeImageModel(fluxTransformer, [dir + "/both.safetensors"], into: dir + "/t2")
        _ = try mergeImageModel(fluxSingle, [dir + "/both.safetensors"], into: dir + "/s2.safetensors")
        let s2 = try Checkpoint(path: dir + "/s2.safetensors"), t2 = try Checkpoint(path: dir + "/t2")
        let qkv = Array(try s2.bytes(of: "double_blocks.0.img_attn.qkv.weight"))
        #expect(try ["to_q", "to_k", "to_v"].flatMap { Array(try t2.bytes(of: "transformer_blocks.0.attn.\($0).weight")) } == qkv)
    }

    // MARK: - BFL single files

    @Test("single.safetensors × the kohya file is ONE file with the base's names and metadata, equal to merged-single.safetensors (diffusers' fuse in BFL names) within 1 ulp")
    func kohyaIntoSingleFile() throws {
        let out = temporaryDirectory() + "/out.safetensors"
        let report = try mergeImageModel(fluxSingle, [flux + "/kohya.safetensors"], into: out)
        var isDir: ObjCBool = true
        #expect(FileManager.default.fileExists(atPath: out, isDirectory: &isDir) && !isDir.boolValue)
        #expect(report.files == ["out.safetensors"] && report.mergedTensors == 30)
        #expect(try worstUlps(out, flux + "/merged-single.safetensors") <= 1)
        let merged = try Checkpoint(path: out), base = try Checkpoint(path: fluxSingle)
        #expect(merged.names == base.names)
        #expect(merged.metadata.map { $0.map { "\($0.key)=\($0.value)" } } == ["format=pt"])
        let changed = try base.names.filter { try Array(base.bytes(of: $0)) != Array(merged.bytes(of: $0)) }
        #expect(changed.count == 30 && changed.contains("double_blocks.0.img_attn.qkv.weight") && changed.contains("final_layer.adaLN_modulation.1.weight"))
    }

    @Test("verify passes the single-file merge and names a changed tensor; inspect names the single file flux")
    func verifySingleFile() throws {
        var v = VerifyOptions(base: fluxSingle, adapters: [(flux + "/kohya.safetensors", 1)], merged: flux + "/merged-single.safetensors")
        v.threads = 2
        let report = try Verify.run(v)
        #expect(report.passed && report.files.map(\.status) == [.equal])
        let changed = temporaryDirectory() + "/changed.safetensors", tensor = "single_blocks.0.linear1.weight"
        try rewriteSafeTensors(flux + "/merged-single.safetensors", to: changed, metadata: [("format", "pt")], flip: tensor)
        v.merged = changed
        #expect(try Verify.run(v).failures.map(\.tensor) == [tensor])
        let family = try Inspect.run(path: fluxSingle).imageModel?.family
        #expect(family?.name == "flux" && family?.evidence.contains("double_blocks.0.img_attn.qkv.weight") == true)
    }

    @Test("single.safetensors × the diffusers-format LoRA is ONE file equal to merged-single.safetensors byte for byte (q/k/v and linear1 parts into their rows, norm_out's halves swapped), the same bytes as the kohya merge")
    func diffusersIntoSingleFile() throws {
        let dir = temporaryDirectory()
        let report = try mergeImageModel(fluxSingle, [flux + "/lora"], into: dir + "/d.safetensors")
        // 44 diffusers modules update 30 BFL tensors.
        #expect(report.files == ["d.safetensors"] && report.mergedTensors == 30)
        #expect(FileManager.default.contents(atPath: dir + "/d.safetensors") == FileManager.default.contents(atPath: flux + "/merged-single.safetensors"))
        _ = try mergeImageModel(fluxSingle, [flux + "/kohya.safetensors"], into: dir + "/k.safetensors")
        #expect(FileManager.default.contents(atPath: dir + "/d.safetensors") == FileManager.default.contents(atPath: dir + "/k.safetensors"))
    }

    @Test("A diffusers LoRA on norm_out.linear alone lands in final_layer.adaLN_modulation.1's swapped halves: that tensor equals merged-single.safetensors', every other one the base's")
    func normOutHalvesSwapped() throws {
        let dir = temporaryDirectory(), lora = dir + "/norm_out.safetensors"
        try rewriteTensors(flux + "/lora/pytorch_lora_weights.safetensors", to: lora, keep: { $0.hasPrefix("transformer.norm_out.linear.") })
        _ = try mergeImageModel(fluxSingle, [lora], into: dir + "/out.safetensors")
        let out = try Checkpoint(path: dir + "/out.safetensors"), base = try Checkpoint(path: fluxSingle)
        let expected = try Checkpoint(path: flux + "/merged-single.safetensors")
        for name in base.names {
            let reference = name == "final_layer.adaLN_modulation.1.weight" ? expected : base
            #expect(Array(try out.bytes(of: name)) == Array(try reference.bytes(of: name)), "\(name)")
        }
        #expect(Array(try out.bytes(of: "final_layer.adaLN_modulation.1.weight")) != Array(try base.bytes(of: "final_layer.adaLN_modulation.1.weight")))
    }

    @Test("verify with the diffusers-format LoRA passes merged-single.safetensors and names the fused tensor of a changed element")
    func verifyDiffusersSingleFile() throws {
        var v = VerifyOptions(base: fluxSingle, adapters: [(flux + "/lora", 1)], merged: flux + "/merged-single.safetensors")
        v.threads = 2
        let report = try Verify.run(v)
        #expect(report.passed && report.files.map(\.status) == [.equal])
        let dir = temporaryDirectory()
        for tensor in ["double_blocks.1.img_attn.qkv.weight", "single_blocks.0.linear1.weight", "final_layer.adaLN_modulation.1.weight"] {
            let changed = dir + "/\(tensor).safetensors"
            try rewriteSafeTensors(flux + "/merged-single.safetensors", to: changed, metadata: [("format", "pt")], flip: tensor)
            v.merged = changed
            #expect(try Verify.run(v).failures.map(\.tensor) == [tensor])
        }
    }

    @Test("FluxNameMap(bfl:) from single.safetensors' shapes equals FluxNameMap(diffusers:) from transformer/'s")
    func bflMapFromShapes() throws {
        let fromBFL = try FluxNameMap(bfl: try Checkpoint(path: fluxSingle), prefix: "")
        let fromDiffusers = try FluxNameMap(diffusers: try Checkpoint(path: fluxTransformer))
        #expect(fromBFL.parts == fromDiffusers.parts && fromBFL.parts.count == 36)
        #expect(fromBFL.parts["single_blocks.1.linear1"]?.map(\.rows) == [[0..<16], [16..<32], [32..<48], [48..<112]])
    }

    @Test("Into a BFL single file: a text-encoder module, a diffusers module no BFL tensor holds, one whose lora_B has another part's rows, and a directory --output are refused by name, nothing written")
    func singleFileRefusals() throws {
        let dir = temporaryDirectory()
        try rewriteTensors(flux + "/kohya.safetensors", to: dir + "/te.safetensors", rename: { $0.replacingOccurrences(of: "lora_unet_img_in", with: "lora_te1_text_model_encoder_layers_0_mlp_fc1") })
        #expect {
            try mergeImageModel(fluxSingle, [dir + "/te.safetensors"], into: dir + "/b.safetensors")
        } throws: { error in "\(error)".contains("lora_te1_text_model_encoder_layers_0_mlp_fc1") && "\(error)".contains("text_encoder") }
        let lora = flux + "/lora/pytorch_lora_weights.safetensors"
        // Without lora_adapter_metadata (alpha = r), so no target_modules leaves the module out as PEFT would.
        try rewriteTensors(lora, to: dir + "/renamed.safetensors", rename: { $0.replacingOccurrences(of: "transformer.x_embedder.", with: "transformer.pos_embed.proj.") })
        try rewriteSafeTensors(dir + "/renamed.safetensors", to: dir + "/pos.safetensors", metadata: [("format", "pt")])
        #expect {
            try mergeImageModel(fluxSingle, [dir + "/pos.safetensors"], into: dir + "/c.safetensors")
        } throws: { error in "\(error)".contains("transformer.pos_embed.proj") && "\(error)".contains("is no part of a BFL Flux module") }
        // proj_mlp's factors (64 rows of B) named as double block 0's to_q (16 rows of img_attn.qkv).
        try rewriteTensors(lora, to: dir + "/rows.safetensors", keep: { $0.hasPrefix("transformer.single_transformer_blocks.0.proj_mlp.") },
                           rename: { $0.replacingOccurrences(of: "single_transformer_blocks.0.proj_mlp", with: "transformer_blocks.0.attn.to_q") })
        #expect {
            try mergeImageModel(fluxSingle, [dir + "/rows.safetensors"], into: dir + "/d.safetensors")
        } throws: { error in
            let text = "\(error)"
            return text.contains("transformer.transformer_blocks.0.attn.to_q") && text.contains("lora_B has 64 rows") && text.contains("16 rows of") && text.contains("double_blocks.0.img_attn.qkv.weight")
        }
        #expect {
            try mergeImageModel(fluxSingle, [flux + "/kohya.safetensors"], into: dir + "/e")
        } throws: { error in "\(error)".contains("give --output NAME.safetensors") }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).sorted() == ["pos.safetensors", "renamed.safetensors", "rows.safetensors", "te.safetensors"])
    }
}
