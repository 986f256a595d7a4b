import Foundation
import Testing
@testable import LoRACore
@testable import SafeTensors

/// scripts/make-fixtures.py group `flux`: `comfy-single.safetensors` (single.safetensors under ComfyUI's
/// `model.diffusion_model.`, loaded back by diffusers' `from_single_file`) and `comfy-lora.safetensors`
/// (kohya.safetensors in ComfyUI's LoRA names, `diffusion_model.<BFL module>`, which diffusers converts
/// as the kohya file).
@Suite("Image models: ComfyUI's Flux checkpoints (model.diffusion_model.) and LoRAs (diffusion_model.), other Flux LoRA layouts refused by name")
struct FluxComfyUITests {
    static let comfySingle = flux + "/comfy-single.safetensors"
    static let comfyLoRA = flux + "/comfy-lora.safetensors"
    static let prefix = "model.diffusion_model."

    @Test("comfy-single.safetensors × the ComfyUI, kohya and diffusers LoRAs: one file, merged-single.safetensors' tensors under model.diffusion_model. byte for byte, the base's names and metadata")
    func mergesIntoComfyUICheckpoint() throws {
        let dir = temporaryDirectory(), expected = try Checkpoint(path: flux + "/merged-single.safetensors"), base = try Checkpoint(path: Self.comfySingle)
        for (n, lora) in [Self.comfyLoRA, flux + "/kohya.safetensors", flux + "/lora"].enumerated() {
            let out = dir + "/\(n).safetensors"
            let report = try mergeImageModel(Self.comfySingle, [lora], into: out)
            #expect(report.files == ["\(n).safetensors"] && report.mergedTensors == 30, "\(lora)")
            let merged = try Checkpoint(path: out)
            #expect(merged.names == base.names && merged.metadata.map { $0.map { "\($0.key)=\($0.value)" } } == ["format=pt"])
            for name in expected.names {
                #expect(Array(try merged.bytes(of: Self.prefix + name)) == Array(try expected.bytes(of: name)), "\(lora): \(name)")
            }
        }
    }

    @Test("comfy-lora.safetensors merges into transformer/ as merged/ and into single.safetensors as merged-single.safetensors, byte for byte")
    func comfyUILoRAIntoOtherBases() throws {
        let dir = temporaryDirectory()
        _ = try mergeImageModel(fluxTransformer, [Self.comfyLoRA], into: dir + "/t")
        #expect(FileManager.default.contents(atPath: dir + "/t/diffusion_pytorch_model.safetensors")
            == FileManager.default.contents(atPath: flux + "/merged/diffusion_pytorch_model.safetensors"))
        _ = try mergeImageModel(fluxSingle, [Self.comfyLoRA], into: dir + "/s.safetensors")
        #expect(FileManager.default.contents(atPath: dir + "/s.safetensors") == FileManager.default.contents(atPath: flux + "/merged-single.safetensors"))
    }

    @Test("inspect names both flux (ComfyUI's keys as evidence); verify passes the ComfyUI merge and names the prefixed fused tensor of a changed element")
    func inspectAndVerify() throws {
        let single = try Inspect.run(path: Self.comfySingle).imageModel?.family
        #expect(single?.name == "flux" && single?.evidence == "BFL single file (model.diffusion_model.double_blocks.0.img_attn.qkv.weight)")
        let lora = try Inspect.run(path: Self.comfyLoRA)
        #expect(lora.imageModel?.family?.name == "flux" && lora.imageModel?.family?.evidence.contains("diffusion_model.") == true)
        #expect(lora.imageModel?.targets.map(\.component) == ["transformer"] && lora.imageModel?.targets.map(\.modules) == [30])
        let against = try Inspect.run(path: Self.comfyLoRA, base: Self.comfySingle)
        #expect(against.base?.problems == [] && against.adapter?.modules.contains { $0.module == "model.diffusion_model.single_blocks.0.linear1" } == true)
        let dir = temporaryDirectory()
        _ = try mergeImageModel(Self.comfySingle, [Self.comfyLoRA], into: dir + "/m.safetensors")
        var v = VerifyOptions(base: Self.comfySingle, adapters: [(Self.comfyLoRA, 1)], merged: dir + "/m.safetensors")
        v.threads = 2
        #expect(try Verify.run(v).passed)
        let tensor = Self.prefix + "single_blocks.0.linear1.weight"
        try rewriteSafeTensors(dir + "/m.safetensors", to: dir + "/changed.safetensors", metadata: [("format", "pt")], flip: tensor)
        v.merged = dir + "/changed.safetensors"
        #expect(try Verify.run(v).failures.map(\.tensor) == [tensor])
    }

    @Test("Flux LoRA layouts diffusers does not merge (BFL Control) or does not read (ComfyUI names with lora_A), and XLabs and fal Kontext files with a tensor their converters do not take, are refused naming a tensor; a T5 module, a CLIP-L module, a kohya name no BFL module has and a flattened lora_transformer_ name no diffusers module has by name")
    func refusals() throws {
        let dir = temporaryDirectory()
        let peftNames: (String) -> String = { $0.replacingOccurrences(of: ".lora_down.", with: ".lora_A.").replacingOccurrences(of: ".lora_up.", with: ".lora_B.") }
        let cases: [(String, (String) -> String, String)] = [
            ("comfy-peft", peftNames, "are no layout diffusers"),
            ("xlabs", { peftNames($0).replacingOccurrences(of: "diffusion_model.double_blocks.0.img_attn.proj", with: "double_blocks.0.processor.proj_lora1") }, "not an XLabs Flux LoRA tensor"),
            ("control", { peftNames($0).replacingOccurrences(of: "diffusion_model.img_in.lora_A.weight", with: "double_blocks.0.img_attn.norm.query_norm.scale") }, "BFL Flux Control LoRA"),
            ("kontext", { peftNames($0).replacingOccurrences(of: "diffusion_model.", with: "base_model.model.") }, "not a fal Kontext Flux LoRA tensor"),
        ]
        for (name, rename, message) in cases {
            try rewriteTensors(Self.comfyLoRA, to: dir + "/\(name).safetensors", keep: { !$0.hasSuffix(".alpha") }, rename: rename)
            #expect {
                try mergeImageModel(Self.comfySingle, [dir + "/\(name).safetensors"], into: dir + "/\(name)-out.safetensors")
            } throws: { error in
                let text = "\(error)"
                return text.contains(message) && text.contains("tensor") && text.contains("\(name).safetensors")
            }
        }
        for (name, module, message) in [("t5", "text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q", "names no pipeline component"),
                                        ("clip", "text_encoders.clip_l.transformer.text_model.encoder.layers.0.mlp.fc1", "targets the text_encoder component")] {
            try rewriteTensors(Self.comfyLoRA, to: dir + "/\(name).safetensors", rename: { $0.replacingOccurrences(of: "diffusion_model.img_in", with: module) })
            #expect {
                try mergeImageModel(Self.comfySingle, [dir + "/\(name).safetensors"], into: dir + "/\(name)-out.safetensors")
            } throws: { error in "\(error)".contains(module) && "\(error)".contains(message) }
        }
        // kohya names that are no BFL (lora_unet_) or diffusers (lora_transformer_) module of the file: refused, never matched by
        // a suffix (`0_img_attn_qkv` ends double block 0's, `blocks_0_attn_to_q` transformer block 0's).
        for (name, module, message) in [("suffix", "lora_unet_0_img_attn_qkv", "no BFL module of"), ("flattened", "lora_transformer_blocks_0_attn_to_q", "flattened name")] {
            try rewriteTensors(flux + "/kohya.safetensors", to: dir + "/\(name).safetensors", keep: { $0.hasPrefix("lora_unet_double_blocks_0_img_attn_qkv.") },
                               rename: { $0.replacingOccurrences(of: "lora_unet_double_blocks_0_img_attn_qkv", with: module) })
            for base in [fluxSingle, Self.comfySingle] {
                #expect {
                    try mergeImageModel(base, [dir + "/\(name).safetensors"], into: dir + "/\(name)-out.safetensors")
                } throws: { error in "\(error)".contains(module) && "\(error)".contains(message) }
            }
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix("-out.safetensors") } == [])
    }
}
