import Foundation
import Testing
@testable import LoRACore
@testable import SafeTensors

@Suite("convert of Flux LoRAs between kohya (BFL names, fused q/k/v) and diffusers names")
struct FluxConvertTests {
    /// Every tensor of `a` equals the tensor of the same name in `b` value for value (dtypes may differ).
    static func sameValues(_ a: String, _ b: String) throws -> Bool {
        let x = try Checkpoint(path: a), y = try Checkpoint(path: b)
        guard x.names == y.names else { return false }
        return try x.names.allSatisfy { try TensorData.floats(x, $0) == TensorData.floats(y, $0) }
    }

    @Test("kohya → diffusers with transformer/ (or a pipeline) as --base splits fused modules exactly: lora/'s values, and the same merge")
    func kohyaToDiffusers() throws {
        let dir = temporaryDirectory()
        var o = ConvertOptions(adapter: flux + "/kohya.safetensors", to: .diffusers, output: dir + "/d")
        o.base = fluxTransformer
        let report = try Convert.run(o)
        #expect(report.modules == 44 && report.scales == [0.75, 1, 1.5, 2])
        #expect(try Self.sameValues(dir + "/d/pytorch_lora_weights.safetensors", flux + "/lora/pytorch_lora_weights.safetensors"))
        let ours = try Adapter(path: dir + "/d"), theirs = try Adapter(path: flux + "/lora")
        #expect(ours.modules.map(\.module) == theirs.modules.map(\.module) && ours.modules.map(\.scale) == theirs.modules.map(\.scale))
        // The same with a Flux pipeline folder as --base.
        let pipeline = dir + "/pipeline"
        try FileManager.default.createDirectory(atPath: pipeline, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: fluxTransformer, toPath: pipeline + "/transformer")
        try Data(#"{"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"]}"#.utf8).write(to: URL(fileURLWithPath: pipeline + "/model_index.json"))
        o.base = pipeline
        o.output = dir + "/p.safetensors"
        _ = try Convert.run(o)
        #expect(try Self.sameValues(dir + "/p.safetensors", flux + "/lora/pytorch_lora_weights.safetensors"))
        _ = try mergeImageModel(fluxTransformer, [dir + "/d"], into: dir + "/m")
        #expect(try worstUlps(dir + "/m/diffusion_pytorch_model.safetensors", FluxMergeTests.oracle) <= 1)
    }

    @Test("diffusers → kohya joins the parts of fused modules back: kohya.safetensors' values and alphas, 30 modules, networks.lora_flux")
    func diffusersToKohya() throws {
        let out = temporaryDirectory() + "/k.safetensors"
        let report = try Convert.run(ConvertOptions(adapter: flux + "/lora", to: .kohya, output: out))
        #expect(report.notes.contains { $0.hasPrefix("30 kohya modules") })
        #expect(try Self.sameValues(out, flux + "/kohya.safetensors"))
        #expect(try Checkpoint(path: out).metadata?.contains { $0.key == "ss_network_module" && $0.value == "networks.lora_flux" } == true)
        let ours = try Adapter(path: out), theirs = try Adapter(path: flux + "/kohya.safetensors")
        #expect(ours.modules.map(\.scale) == theirs.modules.map(\.scale) && ours.modules.count == 30)
    }

    @Test("diffusers → kohya refuses by name the parts of a fused module that are incomplete or do not share lora_A")
    func refusals() throws {
        let dir = temporaryDirectory()
        let lora = flux + "/lora/pytorch_lora_weights.safetensors"
        try rewriteTensors(lora, to: dir + "/partial.safetensors", keep: { !$0.hasPrefix("transformer.transformer_blocks.0.attn.to_v.") })
        #expect {
            try Convert.run(ConvertOptions(adapter: dir + "/partial.safetensors", to: .kohya, output: dir + "/a.safetensors"))
        } throws: { error in
            let text = "\(error)"
            return text.contains("transformer_blocks.0.attn.to_q, transformer_blocks.0.attn.to_k without the rest") && text.contains("double_blocks.0.img_attn.qkv")
        }
        // to_k's lora_A replaced by add_k_proj's (same shape, other values).
        try rewriteTensors(lora, to: dir + "/mixed.safetensors",
                           substitute: ["transformer.transformer_blocks.0.attn.to_k.lora_A.weight": "transformer.transformer_blocks.0.attn.add_k_proj.lora_A.weight"])
        #expect {
            try Convert.run(ConvertOptions(adapter: dir + "/mixed.safetensors", to: .kohya, output: dir + "/b.safetensors"))
        } throws: { error in
            "\(error)".contains("transformer.transformer_blocks.0.attn.to_q and transformer.transformer_blocks.0.attn.to_k differ in lora_A or alpha/r")
        }
        #expect(!FileManager.default.fileExists(atPath: dir + "/a.safetensors") && !FileManager.default.fileExists(atPath: dir + "/b.safetensors"))
    }
}
