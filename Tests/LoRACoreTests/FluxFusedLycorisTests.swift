import Foundation
import Testing
@testable import LoRACore
@testable import SafeTensors

@Suite("Image models: LyCORIS (LoHa, LoKr) on fused BFL modules of a Flux single file")
struct FluxFusedLycorisTests {
    @Test("A LoHa on img_attn_qkv and a LoKr on linear1 (kohya names, in the BFL and the ComfyUI single file) update the whole fused tensor as the one module they were trained on: its bytes equal the same update merged into that tensor alone; in ComfyUI names it is refused naming a tensor")
    func lycorisOnFusedModules() throws {
        let dir = temporaryDirectory()
        func values(_ n: Int, _ seed: Int) -> [Float] { (0..<n).map { Float(($0 * 7 + seed * 13) % 11) / 40 - 0.12 } }
        func update(_ module: String) -> [(String, [Int], [Float])] {
            [(module + "_qkv.hada_w1_a", [48, 2], values(96, 1)), (module + "_qkv.hada_w1_b", [2, 16], values(32, 2)),
             (module + "_qkv.hada_w2_a", [48, 2], values(96, 3)), (module + "_qkv.hada_w2_b", [2, 16], values(32, 4)), (module + "_qkv.alpha", [], [3]),
             (module + "_linear1.lokr_w1", [4, 2], values(8, 5)), (module + "_linear1.lokr_w2", [28, 8], values(224, 6))]
        }
        // The fused tensors alone, as `qkv.weight` and `linear1.weight` of a plain file, and the same update on them.
        let fused = ["double_blocks.0.img_attn.qkv.weight": "x_qkv.weight", "single_blocks.1.linear1.weight": "x_linear1.weight"]
        try rewriteTensors(fluxSingle, to: dir + "/alone.safetensors", keep: { fused[$0] != nil }, rename: { fused[$0]! })
        try ChunkedMergeTests.write(update("lora_unet_x"), to: dir + "/alone-lycoris.safetensors")
        _ = try mergeImageModel(dir + "/alone.safetensors", [dir + "/alone-lycoris.safetensors"], into: dir + "/alone-out")
        let alone = try Checkpoint(path: dir + "/alone-out")
        let kohya = update("lora_unet_double_blocks_0_img_attn").filter { $0.0.contains("_qkv.") }
            + update("lora_unet_single_blocks_1").filter { $0.0.contains("_linear1.") }
        for (name, tensors, base, prefix) in [("kohya", kohya, fluxSingle, ""), ("kohya-comfy-base", kohya, FluxComfyUITests.comfySingle, FluxComfyUITests.prefix)] {
            try ChunkedMergeTests.write(tensors, to: dir + "/\(name).safetensors")
            _ = try mergeImageModel(base, [dir + "/\(name).safetensors"], into: dir + "/\(name)-out.safetensors")
            let out = try Checkpoint(path: dir + "/\(name)-out.safetensors"), original = try Checkpoint(path: base)
            for (bfl, plain) in fused {
                #expect(Array(try out.bytes(of: prefix + bfl)) == Array(try alone.bytes(of: plain)), "\(name): \(bfl)")
                #expect(Array(try out.bytes(of: prefix + bfl)) != Array(try original.bytes(of: prefix + bfl)), "\(name): \(bfl)")
            }
            let changed = try original.names.filter { try Array(original.bytes(of: $0)) != Array(out.bytes(of: $0)) }
            #expect(changed.count == 2, "\(name): \(changed)")
        }
        // In ComfyUI's names: diffusers' Flux.1 loader converts only kohya factors (lora_down/lora_up) from them.
        let comfy = kohya.map { t in
            (t.0.replacingOccurrences(of: "lora_unet_double_blocks_0_img_attn_qkv", with: "diffusion_model.double_blocks.0.img_attn.qkv")
                .replacingOccurrences(of: "lora_unet_single_blocks_1_linear1", with: "diffusion_model.single_blocks.1.linear1"), t.1, t.2)
        }
        try ChunkedMergeTests.write(comfy, to: dir + "/comfy.safetensors")
        #expect {
            try mergeImageModel(FluxComfyUITests.comfySingle, [dir + "/comfy.safetensors"], into: dir + "/comfy-out.safetensors")
        } throws: { error in "\(error)".contains("diffusion_model.double_blocks.0.img_attn.qkv.hada_w1_a") && "\(error)".contains("are no layout diffusers") }
        #expect(!FileManager.default.fileExists(atPath: dir + "/comfy-out.safetensors"))
    }

    @Test("LoHa on img_attn_qkv, LoHa with dora_scale per output row on txt_attn_qkv, LoKr on linear1 (part boundaries off w2's row blocks) and LoHa on final_layer.adaLN_modulation.1 (halves swapped) merge into transformer/: every diffusers tensor is its rows of the same merge into the BFL single file; verify passes; dora_scale per input column and other types on a fused module are refused by name")
    func lycorisOnFusedModulesIntoFolder() throws {
        let dir = temporaryDirectory()
        func values(_ n: Int, _ seed: Int) -> [Float] { (0..<n).map { Float(($0 * 7 + seed * 13) % 11) / 40 - 0.12 } }
        func loha(_ module: String, out: Int, seed: Int) -> [(String, [Int], [Float])] {
            [(module + ".hada_w1_a", [out, 2], values(out * 2, seed)), (module + ".hada_w1_b", [2, 16], values(32, seed + 1)),
             (module + ".hada_w2_a", [out, 2], values(out * 2, seed + 2)), (module + ".hada_w2_b", [2, 16], values(32, seed + 3)), (module + ".alpha", [], [3])]
        }
        let txt = "lora_unet_double_blocks_0_txt_attn_qkv"
        // linear1 is 112 rows = 4 × 28: q, k, v end at rows 16, 32, 48, inside w2's blocks of 28.
        let tensors = loha("lora_unet_double_blocks_0_img_attn_qkv", out: 48, seed: 1) + loha(txt, out: 48, seed: 5) + [(txt + ".dora_scale", [48, 1], values(48, 9).map { $0 + 1 })]
            + loha("lora_unet_final_layer_adaLN_modulation_1", out: 32, seed: 11)
            + [("lora_unet_single_blocks_1_linear1.lokr_w1", [4, 2], values(8, 15)), ("lora_unet_single_blocks_1_linear1.lokr_w2", [28, 8], values(224, 16))]
        try ChunkedMergeTests.write(tensors, to: dir + "/lycoris.safetensors")
        _ = try mergeImageModel(fluxSingle, [dir + "/lycoris.safetensors"], into: dir + "/s.safetensors")
        let report = try mergeImageModel(fluxTransformer, [dir + "/lycoris.safetensors"], into: dir + "/t")
        // Three q/k/v, four linear1 parts and norm_out.linear.
        #expect(report.mergedTensors == 11)
        let single = try Checkpoint(path: dir + "/s.safetensors"), folder = try Checkpoint(path: dir + "/t"), base = try Checkpoint(path: fluxTransformer)
        let rows = try diffusersRows(of: single)
        for (name, bytes) in rows { #expect(Array(try folder.bytes(of: name)) == bytes, "\(name)") }
        #expect(try rows.filter { try Array(base.bytes(of: $0.key)) != $0.value }.count == 11)
        var v = VerifyOptions(base: fluxTransformer, adapters: [(dir + "/lycoris.safetensors", 1)], merged: dir + "/t")
        v.threads = 2
        #expect(try Verify.run(v).passed)
        let refused: [(String, [(String, [Int], [Float])], String)] = [
            ("column", loha(txt, out: 48, seed: 5) + [(txt + ".dora_scale", [1, 16], values(16, 9))], "with dora_scale per input column"),
            ("locon", [(txt + ".lora_down.weight", [2, 16], values(32, 1)), (txt + ".lora_up.weight", [48, 2], values(96, 2)), (txt + ".dora_scale", [48, 1], values(48, 3))],
             "cannot be split into the rows of transformer_blocks.0.attn.add_q_proj"),
        ]
        for (name, file, message) in refused {
            try ChunkedMergeTests.write(file, to: dir + "/\(name).safetensors")
            #expect {
                try mergeImageModel(fluxTransformer, [dir + "/\(name).safetensors"], into: dir + "/\(name)-out")
            } throws: { error in "\(error)".contains(txt) && "\(error)".contains(message) }
            #expect(!FileManager.default.fileExists(atPath: dir + "/\(name)-out"))
        }
    }
}
