import Foundation
import Testing
@testable import LoRACore
@testable import SafeTensors

/// scripts/make-fixtures.py group `flux-te`: a Flux LoRA with CLIP-L modules, as sd-scripts names it (`lora_te1_`) and
/// as diffusers' `FluxPipeline.save_lora_weights` writes it (`text_encoder.encoder.layers.0.…`), which diffusers loads.
let fluxTE = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("ImageFixtures/flux-te").path

@Suite("convert of Flux LoRAs with CLIP-L text-encoder modules between kohya (lora_te1_) and diffusers (text_encoder.)")
struct FluxCLIPConvertTests {
    @Test("diffusers → kohya names CLIP-L's modules lora_te1_text_model_encoder_layers_0_… with their alphas: the kohya file value for value")
    func diffusersToKohya() throws {
        let out = temporaryDirectory() + "/k.safetensors"
        let report = try Convert.run(ConvertOptions(adapter: fluxTE + "/lora", to: .kohya, output: out))
        #expect(report.notes.contains { $0.hasPrefix("8 kohya modules") })
        try expectSameValues(out, fluxTE + "/kohya.safetensors")
        #expect(try Checkpoint(path: out).names.contains("lora_te1_text_model_encoder_layers_0_self_attn_out_proj.alpha"))
        let ours = try Adapter(path: out), theirs = try Adapter(path: fluxTE + "/kohya.safetensors")
        #expect(ours.modules.map(\.module) == theirs.modules.map(\.module) && ours.modules.map(\.scale) == theirs.modules.map(\.scale))
    }

    @Test("kohya → diffusers with transformer/ as --base names CLIP-L's modules by rule (text_encoder.encoder.layers.0.…): the diffusers file value for value, with the same scales; back to kohya it is the kohya file value for value")
    func roundTrip() throws {
        let dir = temporaryDirectory()
        var o = ConvertOptions(adapter: fluxTE + "/kohya.safetensors", to: .diffusers, output: dir + "/d")
        o.base = fluxTransformer
        #expect(try Convert.run(o).modules == 10)
        try expectSameValues(dir + "/d/pytorch_lora_weights.safetensors", fluxTE + "/lora/pytorch_lora_weights.safetensors")
        let ours = try Adapter(path: dir + "/d"), theirs = try Adapter(path: fluxTE + "/lora")
        #expect(ours.modules.map(\.module) == theirs.modules.map(\.module) && ours.modules.map(\.scale) == theirs.modules.map(\.scale))
        #expect(ours.modules.contains { $0.module == "text_encoder.encoder.layers.0.mlp.fc2" })
        _ = try Convert.run(ConvertOptions(adapter: dir + "/d", to: .kohya, output: dir + "/k.safetensors"))
        try expectSameValues(dir + "/k.safetensors", fluxTE + "/kohya.safetensors")
    }

    @Test("A T5 (text_encoder_2) module, which diffusers' Flux loader does not load, is refused by name for --to kohya; a CLIP-L name outside sd-scripts' linears is refused with transformer/ as --base")
    func refusals() throws {
        let dir = temporaryDirectory()
        func write(_ path: String, _ modules: [String], _ down: String, _ up: String, shape: (Int, Int)) throws {
            let w = try SafeTensorsWriter(path: path, tensors: modules.flatMap { [TensorInfo(name: $0 + down, dtype: .float32, shape: [1, shape.1]),
                                                                                  TensorInfo(name: $0 + up, dtype: .float32, shape: [shape.0, 1])] }, metadata: nil)
            while let t = w.nextTensor { try [UInt8](repeating: 0, count: t.byteCount).withUnsafeBytes { try w.write(t.name, bytes: $0) } }
            try w.finish()
        }
        // A Flux LoRA (a transformer module) with a T5 module.
        let t5 = "text_encoder_2.encoder.block.0.layer.0.SelfAttention.q"
        try write(dir + "/t5.safetensors", ["transformer.x_embedder", t5], ".lora_A.weight", ".lora_B.weight", shape: (16, 8))
        let error = #expect(throws: LoRACoreError.self) { try Convert.run(ConvertOptions(adapter: dir + "/t5.safetensors", to: .kohya, output: dir + "/k.safetensors")) }
        #expect(error?.errorDescription?.contains("module '\(t5)': a Flux LoRA converts to kohya names for its transformer modules and CLIP-L's") == true, "\(String(describing: error))")
        #expect(!FileManager.default.fileExists(atPath: dir + "/k.safetensors"))
        let embedding = "lora_te1_text_model_embeddings_position_embedding"
        try write(dir + "/e.safetensors", [embedding], ".lora_down.weight", ".lora_up.weight", shape: (16, 16))
        var o = ConvertOptions(adapter: dir + "/e.safetensors", to: .diffusers, output: dir + "/d")
        o.base = fluxTransformer
        #expect(throws: LoRACoreError.baseMismatch(
            module: embedding,
            detail: "targets the text_encoder component, which \(fluxTransformer) does not have (it has transformer); merge and verify take the pipeline folder as --base")) {
            try Convert.run(o)
        }
    }

    @Test("inspect names both files' family flux")
    func inspect() throws {
        #expect(try Inspect.run(path: fluxTE + "/lora").imageModel?.family?.name == "flux")
        #expect(try Inspect.run(path: fluxTE + "/kohya.safetensors").imageModel?.family?.name == "flux")
    }
}
