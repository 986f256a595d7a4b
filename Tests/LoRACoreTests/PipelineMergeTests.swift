import Foundation
import Testing
@testable import LoRACore
import LoRAGraph
@testable import SafeTensors

@Suite("Image models: merges into diffusers pipelines and components")
struct DiffusersPipelineMergeTests {
    @Test("A pipeline folder merged with the diffusers file equals diffusers' fuse (fp32, rounded once) within 1 ulp; other files byte for byte")
    func pipelineMatchesDiffusers() throws {
        let out = temporaryDirectory() + "/merged"
        let report = try mergeImageModel(sd1Pipeline, [sd1 + "/lora"], into: out)
        #expect(report.mergedTensors == 70)
        #expect(try worstUlps(out + "/unet/diffusion_pytorch_model.safetensors", sd1Oracle + "/unet/diffusion_pytorch_model.safetensors") <= 1)
        #expect(try worstUlps(out + "/text_encoder/model.safetensors", sd1Oracle + "/text_encoder/model.safetensors") <= 1)
        for file in ["model_index.json", "scheduler/scheduler_config.json", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json",
                     "unet/config.json", "text_encoder/config.json", "vae/config.json", "vae/diffusion_pytorch_model.safetensors"] {
            #expect(FileManager.default.contents(atPath: out + "/" + file) == FileManager.default.contents(atPath: sd1Pipeline + "/" + file), "\(file)")
        }
        #expect(report.files.contains("unet/diffusion_pytorch_model.safetensors") && report.files.count == 10)
    }

    @Test("The kohya file of the same deltas writes the same bytes as the diffusers file")
    func kohyaEqualsDiffusers() throws {
        let dir = temporaryDirectory()
        _ = try mergeImageModel(sd1Pipeline, [sd1 + "/lora"], into: dir + "/a")
        _ = try mergeImageModel(sd1Pipeline, [sd1 + "/kohya.safetensors"], into: dir + "/b")
        for file in ["unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"] {
            #expect(FileManager.default.contents(atPath: dir + "/a/" + file) == FileManager.default.contents(atPath: dir + "/b/" + file), "\(file)")
        }
    }

    @Test("A kohya file with dora_scale (per output row, and per input column) merges as ComfyUI's and lycoris' weight decomposition within 1 ulp of the float64 expectation (diffusers drops dora_scale); the other tensors as without it; verify passes")
    func kohyaDoRA() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        _ = try mergeImageModel(sd1Pipeline, [sd1 + "/kohya-dora.safetensors"], into: dir + "/dora")
        _ = try mergeImageModel(sd1Pipeline, [sd1 + "/kohya.safetensors"], into: dir + "/plain")
        let expected = try Checkpoint(path: sd1 + "/kohya-dora-expected.safetensors")
        #expect(expected.names.count == 2)
        for file in ["unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"] {
            let dora = try Checkpoint(path: dir + "/dora/" + file), plain = try Checkpoint(path: dir + "/plain/" + file)
            let component = file.hasPrefix("unet") ? "unet." : "text_encoder."
            for name in dora.names {
                if expected.info(component + name) != nil {
                    let d = ulpDistance(try dora.bytes(of: name), try expected.bytes(of: component + name), dtype: .float16)
                    #expect(d <= 1, "\(name): \(d) ulp")
                    #expect(!(try dora.bytes(of: name).elementsEqual(try plain.bytes(of: name))), "\(name) not rescaled")
                } else {
                    #expect(try dora.bytes(of: name).elementsEqual(try plain.bytes(of: name)), "\(name)")
                }
            }
        }
        #expect(try Verify.run(VerifyOptions(base: sd1Pipeline, adapters: [(sd1 + "/kohya-dora.safetensors", 1)], merged: dir + "/dora")).passed)
    }

    @Test("Several LoRAs with weights in one merge: the diffusers file and the kohya file of the same deltas at 0.5 each equal diffusers' fuse of one at 1 within 1 ulp, into the pipeline and into the single file; verify passes with the same weights and fails with others")
    func weightedMix() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let mix = [(sd1 + "/lora", 0.5), (sd1 + "/kohya.safetensors", 0.5)]
        for (base, output, oracle) in [(sd1Pipeline, dir + "/pipeline", sd1Oracle), (sd1Single, dir + "/single.safetensors", sd1SingleOracle)] {
            var o = MergeOptions(base: base, adapters: mix, output: output)
            o.durable = false
            _ = try Merge.run(o)
            for file in output.hasSuffix(".safetensors") ? [""] : ["/unet/diffusion_pytorch_model.safetensors", "/text_encoder/model.safetensors"] {
                let expected = oracle + (file.isEmpty ? "" : file)
                #expect(try worstUlps(output + file, expected) <= 1, "\(output + file)")
            }
            #expect(try Verify.run(VerifyOptions(base: base, adapters: mix, merged: output)).passed)
            #expect(!(try Verify.run(VerifyOptions(base: base, adapters: [(sd1 + "/lora", 0.5), (sd1 + "/kohya.safetensors", 0.25)], merged: output)).passed))
        }
    }

    @Test("Each kohya module keeps its own .alpha: the diffusers file's scales, where diffusers' kohya loader gives 8 to_v modules the common alpha")
    func kohyaAlphas() throws {
        let kohya = try Adapter(path: sd1 + "/kohya.safetensors")
        let views = try [("unet", sd1Pipeline + "/unet"), ("text_encoder", sd1Pipeline + "/text_encoder")].flatMap { component, path in
            try DiffusersComponent.view(of: kohya, for: component, available: ["text_encoder", "unet"], base: try Checkpoint(path: path)).modules
                .map { (component + "." + $0.module, $0.scale) }
        }
        let ours = Dictionary(uniqueKeysWithValues: views)
        let diffusersFile = try diffusersScales("lora"), diffusersKohya = try diffusersScales("kohya")
        #expect(ours == diffusersFile)
        let misread = diffusersKohya.filter { diffusersFile[$0.key] != $0.value }
        #expect(misread.count == 8 && misread.keys.allSatisfy { $0.hasSuffix(".to_v") } && misread.values.allSatisfy { $0 == 1.5 })
    }

    @Test("A unet/ folder keeps diffusion_pytorch_model.safetensors and merges a kohya LoCon as diffusers does")
    func componentFolder() throws {
        let out = temporaryDirectory() + "/unet"
        let report = try mergeImageModel(sd1Pipeline + "/unet", [sd1 + "/kohya-unet.safetensors"], into: out)
        #expect(report.files.sorted() == ["config.json", "diffusion_pytorch_model.safetensors"])
        #expect(report.families.contains { $0.family == "conv1" })
        #expect(try worstUlps(out + "/diffusion_pytorch_model.safetensors", sd1Oracle + "/unet/diffusion_pytorch_model.safetensors") <= 1)
        var v = VerifyOptions(base: sd1Pipeline + "/unet", adapters: [(sd1 + "/kohya-unet.safetensors", 1)], merged: out)
        v.threads = 2
        #expect(try Verify.run(v).passed)
    }

    @Test("Keys for a component the base lacks are refused by name")
    func foreignComponent() throws {
        let dir = temporaryDirectory()
        for adapter in [sd1 + "/kohya.safetensors", sd1 + "/lora"] {
            let error = #expect(throws: LoRACoreError.self) { try mergeImageModel(sd1Pipeline + "/unet", [adapter], into: dir + "/out") }
            #expect(error?.errorDescription?.contains("targets the text_encoder component") == true, "\(String(describing: error))")
        }
        #expect(!FileManager.default.fileExists(atPath: dir + "/out"))
    }

    @Test("A PEFT adapter is refused for a whole pipeline: it targets one model")
    func peftAdapterRefused() throws {
        let samples = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path + "/samples"
        let error = #expect(throws: LoRACoreError.self) { try mergeImageModel(sd1Pipeline, [samples + "/tiny-llama-lora"], into: temporaryDirectory() + "/out") }
        #expect(error?.errorDescription?.contains("targets one model, not a pipeline") == true)
    }

    @Test("verify accepts the pipeline merge and names the component and tensor of a changed element")
    func verifyPipeline() throws {
        let dir = temporaryDirectory()
        _ = try mergeImageModel(sd1Pipeline, [sd1 + "/lora"], into: dir + "/merged")
        var v = VerifyOptions(base: sd1Pipeline, adapters: [(sd1 + "/lora", 1)], merged: dir + "/merged")
        v.threads = 2
        let passed = try Verify.run(v).passed
        #expect(passed)
        let file = dir + "/merged/unet/diffusion_pytorch_model.safetensors"
        let tensor = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
        try rewriteSafeTensors(file, to: dir + "/changed.safetensors", metadata: [("format", "pt")], flip: tensor)
        try FileManager.default.removeItem(atPath: file)
        try FileManager.default.moveItem(atPath: dir + "/changed.safetensors", toPath: file)
        let failures = try Verify.run(v).failures
        #expect(failures.map(\.tensor) == ["unet/" + tensor])
        #expect(failures.first?.detail?.isEmpty == false)
    }

    @Test("--force replaces a pipeline lora-tool wrote, never one holding a file it did not write")
    func forceReplacesOwnPipelineOnly() throws {
        let out = temporaryDirectory() + "/merged"
        _ = try mergeImageModel(sd1Pipeline, [sd1 + "/lora"], into: out)
        #expect(throws: SafeTensorsError.self) { try mergeImageModel(sd1Pipeline, [sd1 + "/lora"], into: out) }
        _ = try mergeImageModel(sd1Pipeline, [sd1 + "/lora"], into: out, force: true)
        FileManager.default.createFile(atPath: out + "/unet/notes.txt", contents: Data("mine".utf8))
        #expect(throws: SafeTensorsError.self) { try mergeImageModel(sd1Pipeline, [sd1 + "/lora"], into: out, force: true) }
        #expect(FileManager.default.contents(atPath: out + "/unet/notes.txt") == Data("mine".utf8))
    }
}

@Suite("Image models: text encoders saved with transformers 4's text_model. prefix")
struct TextModelPrefixTests {
    /// The sd1 pipeline with its text encoder's tensors renamed `text_model.<name>`, as Hub SD 1.x
    /// checkpoints (saved by transformers 4) name them.
    static func prefixedPipeline(in dir: String) throws -> String {
        let out = dir + "/pipeline"
        for folder in ["", "/unet", "/text_encoder", "/vae", "/tokenizer", "/scheduler"] {
            try FileManager.default.createDirectory(atPath: out + folder, withIntermediateDirectories: true)
        }
        for file in try FileManager.default.subpathsOfDirectory(atPath: sd1Pipeline) where file != "text_encoder/model.safetensors" {
            var isDir: ObjCBool = false
            FileManager.default.fileExists(atPath: sd1Pipeline + "/" + file, isDirectory: &isDir)
            if !isDir.boolValue { try FileManager.default.copyItem(atPath: sd1Pipeline + "/" + file, toPath: out + "/" + file) }
        }
        let ckpt = try Checkpoint(path: sd1Pipeline + "/text_encoder/model.safetensors")
        let w = try SafeTensorsWriter(path: out + "/text_encoder/model.safetensors",
                                      tensors: ckpt.names.map { n in var i = ckpt.info(n)!; i.name = "text_model." + n; return i }, metadata: [("format", "pt")])
        while let t = w.nextTensor { try w.write(t.name, bytes: try ckpt.bytes(of: String(t.name.dropFirst("text_model.".count)))) }
        try w.finish()
        return out
    }

    @Test("kohya and diffusers LoRAs merge into a text_model.-prefixed text encoder with the same values as into the plain one")
    func prefixedTextEncoder() throws {
        let dir = temporaryDirectory()
        let prefixed = try Self.prefixedPipeline(in: dir)
        for adapter in [sd1 + "/kohya.safetensors", sd1 + "/lora"] {
            let name = (adapter as NSString).lastPathComponent
            _ = try mergeImageModel(prefixed, [adapter], into: dir + "/p-" + name)
            _ = try mergeImageModel(sd1Pipeline, [adapter], into: dir + "/q-" + name)
            let p = try Checkpoint(path: dir + "/p-" + name + "/text_encoder/model.safetensors")
            let q = try Checkpoint(path: dir + "/q-" + name + "/text_encoder/model.safetensors")
            #expect(p.names == q.names.map { "text_model." + $0 }.sorted())
            for n in q.names { #expect(Array(try p.bytes(of: "text_model." + n)) == Array(try q.bytes(of: n)), "\(name): \(n)") }
            let base = try Checkpoint(path: sd1Pipeline + "/text_encoder")
            #expect(Array(try q.bytes(of: "encoder.layers.0.mlp.fc1.weight")) != Array(try base.bytes(of: "encoder.layers.0.mlp.fc1.weight")))
        }
    }
}

@Suite("Image models: pipelines diffusers can load in more than one way")
struct PipelineVariantTests {
    @Test("A component holding two weight variants (fp16 beside the default) is refused by name, nothing written")
    func variantsRefused() throws {
        let dir = temporaryDirectory()
        let pipeline = try TextModelPrefixTests.prefixedPipeline(in: dir)
        try FileManager.default.copyItem(atPath: pipeline + "/unet/diffusion_pytorch_model.safetensors", toPath: pipeline + "/unet/diffusion_pytorch_model.fp16.safetensors")
        let error = #expect(throws: SafeTensorsError.self) { try mergeImageModel(pipeline, [sd1 + "/lora"], into: dir + "/out") }
        #expect(error?.localizedDescription.contains("diffusion_pytorch_model.fp16.safetensors, diffusion_pytorch_model.safetensors") == true, "\(String(describing: error))")
        #expect(!FileManager.default.fileExists(atPath: dir + "/out"))
    }

    @Test("Weight variants are read from file names", arguments: [
        ("diffusion_pytorch_model.safetensors", ""), ("diffusion_pytorch_model.fp16.safetensors", "fp16"),
        ("model.fp16-00001-of-00002.safetensors", "fp16"), ("diffusion_pytorch_model.safetensors.index.json", ""),
        ("model-00002-of-00002.safetensors", ""), ("config.json", nil),
    ] as [(String, String?)])
    func variants(file: String, variant: String?) {
        #expect(DiffusersPipeline.weightVariant(file) == variant)
    }
}

