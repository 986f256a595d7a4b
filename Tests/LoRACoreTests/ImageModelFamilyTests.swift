import Foundation
import Testing
@testable import LoRACore
@testable import SafeTensors

@Suite("inspect names image-model families, dialects and component targets")
struct ImageModelFamilyTests {
    @Test("The sd1 pipeline, its unet/ folder and both of its LoRA files are sd1; the pipeline lists its components")
    func sd1Fixtures() throws {
        let report = try Inspect.run(path: sd1Pipeline)
        #expect(report.imageModel?.family?.name == "sd1")
        #expect(report.imageModel?.components.map(\.name) == ["text_encoder", "unet", "vae"])
        #expect(report.imageModel?.components.map(\.className) == ["CLIPTextModel", "UNet2DConditionModel", "AutoencoderKL"])
        #expect(report.tensorCount == 320 && report.tensors.contains { $0.name == "unet/conv_in.weight" })
        #expect(try Inspect.run(path: sd1Pipeline + "/unet").imageModel?.family?.name == "sd1")
        for (file, dialect) in [("lora", "diffusers LoRA"), ("kohya.safetensors", "kohya LoRA (sd-scripts)")] {
            let lora = try Inspect.run(path: sd1 + "/" + file)
            #expect(lora.adapter?.dialect == dialect)
            #expect(lora.imageModel?.family?.name == "sd1")
            let targets = lora.imageModel?.targets ?? []
            #expect(targets.map(\.component) == ["text_encoder", "unet"])
            #expect(targets.map(\.modules) == [6, 64])
            #expect(targets.map(\.ranks) == [[2], [2, 4]])
            #expect(targets.map(\.alphas) == [[3], [3, 6]])
        }
    }

    @Test("A language-model kohya file and a PEFT adapter name no image family")
    func notImageModels() throws {
        let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures").path
        #expect(try Inspect.run(path: fixtures + "/llama_kohya/adapter").imageModel == nil)
        #expect(try Inspect.run(path: fixtures + "/llama_f32/adapter").imageModel == nil)
    }

    @Test("SDXL, SD 2 and Flux are recognised by their diffusers configs")
    func configs() throws {
        let dir = temporaryDirectory()
        func family(_ config: String, pipeline: String? = nil) throws -> String? {
            let d = dir + "/" + UUID().uuidString
            try FileManager.default.createDirectory(atPath: d + "/unet", withIntermediateDirectories: true)
            try Data(config.utf8).write(to: URL(fileURLWithPath: d + "/unet/config.json"))
            if let pipeline {
                try Data(pipeline.utf8).write(to: URL(fileURLWithPath: d + "/model_index.json"))
                return ImageModelFamily.of(directory: d)?.name
            }
            return ImageModelFamily.of(directory: d + "/unet")?.name
        }
        #expect(try family(#"{"_class_name": "UNet2DConditionModel", "addition_embed_type": "text_time", "cross_attention_dim": 2048}"#) == "sdxl")
        #expect(try family(#"{"_class_name": "UNet2DConditionModel", "cross_attention_dim": 1024}"#) == "sd2")
        #expect(try family(#"{"_class_name": "UNet2DConditionModel", "cross_attention_dim": 768}"#) == "sd1")
        #expect(try family(#"{"_class_name": "FluxTransformer2DModel"}"#) == "flux")
        #expect(try family(#"{"_class_name": "UNet2DConditionModel"}"#, pipeline: #"{"_class_name": "StableDiffusionXLPipeline"}"#) == "sdxl")
        #expect(try family(#"{"_class_name": "AutoencoderKL"}"#) == nil)
    }

    @Test("SDXL, SD 2 and Flux LoRAs are recognised by their keys", arguments: [
        (["lora_te1_text_model_encoder_layers_0_mlp_fc1"], "sdxl"),
        (["lora_unet_input_blocks_1_1_proj_in"], "sdxl"),
        (["lora_unet_double_blocks_0_img_attn_proj"], "flux"),
        (["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k:1024"], "sd2"),
        (["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k:768"], "sd1"),
        (["unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k:2048"], "sdxl"),
        (["text_encoder_2.encoder.layers.0.mlp.fc1"], "sdxl"),
        (["transformer.single_transformer_blocks.0.proj_out"], "flux"),
    ])
    func loraKeys(modules: [String], family: String) throws {
        let dir = temporaryDirectory()
        var tensors: [TensorInfo] = []
        for m in modules {
            let parts = m.split(separator: ":"), name = String(parts[0]), width = parts.count > 1 ? Int(parts[1])! : 8
            let (a, b) = name.hasPrefix("lora_") ? (".lora_down.weight", ".lora_up.weight") : (".lora_A.weight", ".lora_B.weight")
            tensors += [TensorInfo(name: name + a, dtype: .float32, shape: [2, width]), TensorInfo(name: name + b, dtype: .float32, shape: [8, 2])]
        }
        let w = try SafeTensorsWriter(path: dir + "/l.safetensors", tensors: tensors, metadata: nil)
        while let t = w.nextTensor { try [UInt8](repeating: 0, count: t.byteCount).withUnsafeBytes { try w.write(t.name, bytes: $0) } }
        try w.finish()
        #expect(ImageModelFamily.of(adapter: try Adapter(path: dir + "/l.safetensors"))?.name == family)
    }

    @Test("inspect --base unet/ checks the LoRA's UNet modules against it; a pipeline as --base is refused")
    func inspectAgainstComponent() throws {
        let report = try Inspect.run(path: sd1 + "/kohya-unet.safetensors", base: sd1Pipeline + "/unet")
        #expect(report.base?.problems == [])
        #expect(report.base?.adapterParameters ?? 0 > 0)
        let mixed = try Inspect.run(path: sd1 + "/lora", base: sd1Pipeline + "/unet")
        #expect(mixed.base?.problems.count == 1 && mixed.base?.problems.first?.contains("targets the text_encoder component") == true)
        #expect(throws: LoRACoreError.self) { try Inspect.run(path: sd1 + "/lora", base: sd1Pipeline) }
    }
}

