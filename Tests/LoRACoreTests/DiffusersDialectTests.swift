import Foundation
import Testing
@testable import LoRACore
import LoRAGraph
@testable import SafeTensors

@Suite("diffusers-format LoRA files")
struct DiffusersDialectTests {
    @Test("Scales from lora_adapter_metadata equal the ones diffusers resolves, per module")
    func metadataScales() throws {
        let adapter = try Adapter(path: sd1 + "/lora")
        #expect(adapter.format == .diffusers)
        let expected = try diffusersScales("lora")
        #expect(Dictionary(uniqueKeysWithValues: adapter.modules.map { ($0.module, $0.scale) }) == expected)
        #expect(Set(expected.values) == [0.75, 1.5, 3.0])
    }

    @Test("Without metadata every module has alpha = r, as diffusers loads it")
    func noMetadata() throws {
        let adapter = try Adapter(path: sd1 + "/lora-no-metadata.safetensors")
        #expect(adapter.format == .diffusers)
        #expect(Dictionary(uniqueKeysWithValues: adapter.modules.map { ($0.module, $0.scale) }) == (try diffusersScales("lora-no-metadata")))
        #expect(adapter.modules.allSatisfy { $0.alpha == Double($0.rank) })
    }

    @Test("diffusers' pre-PEFT key forms (attention-processor to_q_lora, .lora.down, a text encoder's to_q_lora and lora_linear_layer): the modules and scales diffusers loads, and the same merge as those tensors in PEFT keys")
    func oldFormat() throws {
        let adapter = try Adapter(path: sd1 + "/lora-old-format.safetensors")
        #expect(adapter.format == .diffusers)
        // The file names the text encoder as transformers 4 did (text_model.); diffusers' record does not.
        let scales = Dictionary(uniqueKeysWithValues: adapter.modules.map { ($0.module.replacingOccurrences(of: "text_encoder.text_model.", with: "text_encoder."), $0.scale) })
        #expect(scales == (try diffusersScales("lora-old-format")))
        #expect(adapter.modules.contains { $0.module.hasSuffix("attn1.to_out.0") } && adapter.modules.contains { $0.module.hasSuffix("self_attn.out_proj") })
        #expect(ImageModelFamily.of(adapter: adapter)?.evidence.contains("attn2.to_k input width") == true)
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for (name, file) in [("old", "lora-old-format.safetensors"), ("peft", "lora-no-metadata.safetensors")] {
            var o = MergeOptions(base: sd1 + "/pipeline", adapters: [(sd1 + "/" + file, 1)], output: dir + "/" + name)
            o.durable = false
            _ = try Merge.run(o)
        }
        for f in ["unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"] {
            #expect(try Data(contentsOf: URL(fileURLWithPath: dir + "/old/" + f)) == Data(contentsOf: URL(fileURLWithPath: dir + "/peft/" + f)), "\(f)")
        }
    }

    @Test("A metadata field LoraConfig does not have, a key naming no component, use_dora without magnitude vectors are refused by name")
    func unknownField() throws {
        let dir = temporaryDirectory()
        let original = try Checkpoint(path: sd1 + "/lora/pytorch_lora_weights.safetensors").metadata!
        let text = original.first { $0.key == "lora_adapter_metadata" }!.value
        for (find, replacement, bad) in [("\"unet.lora_alpha\"", "\"unet.lora_alfa\"", "key 'unet.lora_alfa': 'lora_alfa' is not a LoraConfig field"),
                                         ("\"unet.lora_alpha\"", "\"vae.r\"", "key 'vae.r' names no component"),
                                         ("\"unet.use_dora\": false", "\"unet.use_dora\": true", "sets unet.use_dora but the module has no lora_magnitude_vector")] {
            #expect(text.contains(find))
            try rewriteSafeTensors(sd1 + "/lora/pytorch_lora_weights.safetensors", to: dir + "/x.safetensors",
                                   metadata: [("format", "pt"), ("lora_adapter_metadata", text.replacingOccurrences(of: find, with: replacement))])
            let error = #expect(throws: LoRACoreError.self) { try Adapter(path: dir + "/x.safetensors") }
            #expect(error?.errorDescription?.contains(bad) == true, "\(String(describing: error))")
            try FileManager.default.removeItem(atPath: dir + "/x.safetensors")
        }
    }

    @Test("A rank that disagrees with the metadata's r is refused, naming the module")
    func rankMismatch() throws {
        let dir = temporaryDirectory()
        let original = try Checkpoint(path: sd1 + "/lora/pytorch_lora_weights.safetensors").metadata!
        let text = original.first { $0.key == "lora_adapter_metadata" }!.value.replacingOccurrences(of: "\"text_encoder.r\": 2", with: "\"text_encoder.r\": 3")
        try rewriteSafeTensors(sd1 + "/lora/pytorch_lora_weights.safetensors", to: dir + "/x.safetensors", metadata: [("lora_adapter_metadata", text)])
        let error = #expect(throws: LoRACoreError.self) { try Adapter(path: dir + "/x.safetensors") }
        #expect(error?.errorDescription?.contains("text_encoder.encoder.layers.0.mlp.fc1") == true)
    }

    @Test("diffusers' own .lora.down/.lora.up keys (convert_state_dict_to_diffusers) read as A and B: the same merge, every module")
    func downUpKeys() throws {
        let dir = temporaryDirectory()
        let source = sd1 + "/lora/pytorch_lora_weights.safetensors"
        let ckpt = try Checkpoint(path: source)
        func renamed(_ n: String) -> String {
            n.hasPrefix("unet.") ? n.replacingOccurrences(of: ".lora_A.weight", with: ".lora.down.weight").replacingOccurrences(of: ".lora_B.weight", with: ".lora.up.weight") : n
        }
        let w = try SafeTensorsWriter(path: dir + "/x.safetensors", tensors: ckpt.names.map { n in var i = ckpt.info(n)!; i.name = renamed(n); return i }, metadata: ckpt.metadata)
        let back = Dictionary(uniqueKeysWithValues: ckpt.names.map { (renamed($0), $0) })
        while let t = w.nextTensor { try w.write(t.name, bytes: try ckpt.bytes(of: back[t.name]!)) }
        try w.finish()
        let original = try Adapter(path: sd1 + "/lora"), converted = try Adapter(path: dir + "/x.safetensors")
        #expect(converted.modules.count == 70)
        #expect(converted.modules.map(\.module) == original.modules.map(\.module))
        #expect(converted.modules.map(\.scale) == original.modules.map(\.scale))
        _ = try mergeImageModel(sd1Pipeline, [dir + "/x.safetensors"], into: dir + "/a")
        _ = try mergeImageModel(sd1Pipeline, [sd1 + "/lora"], into: dir + "/b")
        let file = "/unet/diffusion_pytorch_model.safetensors"
        #expect(FileManager.default.contents(atPath: dir + "/a" + file) == FileManager.default.contents(atPath: dir + "/b" + file))
    }

    @Test("convert (to PEFT, mlx, or kohya from kohya) refuses image-model LoRAs (their writers would lose the component names), as combine does with --to another format, and writes nothing")
    func writersRefuse() throws {
        let dir = temporaryDirectory()
        for adapter in [sd1 + "/lora", sd1 + "/kohya.safetensors"] {
            for to in adapter.hasSuffix("lora") ? [Adapter.Format.peft, .mlx] : [.peft, .kohya] {
                let error = #expect(throws: LoRACoreError.self) { try Convert.run(ConvertOptions(adapter: adapter, to: to, output: dir + "/c")) }
                #expect(error?.errorDescription?.contains("convert of an image model's LoRA (sd1) is not implemented yet") == true, "\(String(describing: error))")
            }
            var combine = CombineOptions(adapters: [(adapter, 1)], method: .cat, output: dir + "/m")
            combine.to = .peft
            #expect(throws: LoRACoreError.self) { try Combine.run(combine) }
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty)
    }

    @Test("convert --to kohya writes sd-scripts' names and each module's alpha: the fixture's sd-scripts file, value for value, and the same merge")
    func toKohya() throws {
        let dir = temporaryDirectory()
        _ = try Convert.run(ConvertOptions(adapter: sd1 + "/lora", to: .kohya, output: dir + "/k.safetensors"))
        let ours = try Checkpoint(path: dir + "/k.safetensors"), theirs = try Checkpoint(path: sd1 + "/kohya.safetensors")
        #expect(ours.names == theirs.names)
        for name in theirs.names {
            #expect(try TensorData.floats(ours, name) == TensorData.floats(theirs, name), "\(name)")
        }
        _ = try mergeImageModel(sd1Pipeline, [dir + "/k.safetensors"], into: dir + "/a")
        _ = try mergeImageModel(sd1Pipeline, [sd1 + "/lora"], into: dir + "/b")
        for file in ["/unet/diffusion_pytorch_model.safetensors", "/text_encoder/model.safetensors"] {
            #expect(FileManager.default.contents(atPath: dir + "/a" + file) == FileManager.default.contents(atPath: dir + "/b" + file), "\(file)")
        }
    }

    @Test("convert --to diffusers: the kohya file with its pipeline as --base gives the diffusers file's scales and factors, and the same merge")
    func kohyaToDiffusers() throws {
        let dir = temporaryDirectory()
        var o = ConvertOptions(adapter: sd1 + "/kohya.safetensors", to: .diffusers, output: dir + "/d")
        o.base = sd1Pipeline
        _ = try Convert.run(o)
        #expect(FileManager.default.fileExists(atPath: dir + "/d/pytorch_lora_weights.safetensors"))
        let converted = try Adapter(path: dir + "/d"), original = try Adapter(path: sd1 + "/lora")
        #expect(converted.format == .diffusers)
        #expect(Dictionary(uniqueKeysWithValues: converted.modules.map { ($0.module, $0.scale) }) == (try diffusersScales("lora")))
        let ours = converted.checkpoint, theirs = original.checkpoint
        #expect(ours.names == theirs.names)
        for name in theirs.names { #expect(try TensorData.floats(ours, name) == TensorData.floats(theirs, name), "\(name)") }
        _ = try mergeImageModel(sd1Pipeline, [dir + "/d"], into: dir + "/a")
        _ = try mergeImageModel(sd1Pipeline, [sd1 + "/lora"], into: dir + "/b")
        for file in ["/unet/diffusion_pytorch_model.safetensors", "/text_encoder/model.safetensors"] {
            #expect(FileManager.default.contents(atPath: dir + "/a" + file) == FileManager.default.contents(atPath: dir + "/b" + file), "\(file)")
        }
        #expect(throws: LoRACoreError.self) { try Convert.run(ConvertOptions(adapter: sd1 + "/kohya.safetensors", to: .diffusers, output: dir + "/e")) }
    }
}

