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

    @Test("A metadata field LoraConfig does not have is refused by name")
    func unknownField() throws {
        let dir = temporaryDirectory()
        let original = try Checkpoint(path: sd1 + "/lora/pytorch_lora_weights.safetensors").metadata!
        for (key, bad) in [("unet.lora_alfa", "'lora_alfa' is not a LoraConfig field"), ("vae.r", "names no component")] {
            let text = original.first { $0.key == "lora_adapter_metadata" }!.value
            let edited = text.replacingOccurrences(of: "\"unet.lora_alpha\"", with: "\"\(key)\"")
            try rewriteSafeTensors(sd1 + "/lora/pytorch_lora_weights.safetensors", to: dir + "/x.safetensors",
                        metadata: [("format", "pt"), ("lora_adapter_metadata", edited)])
            let error = #expect(throws: LoRACoreError.self) { try Adapter(path: dir + "/x.safetensors") }
            #expect(error?.errorDescription?.contains(key) == true && error?.errorDescription?.contains(bad) == true, "\(String(describing: error))")
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
}
