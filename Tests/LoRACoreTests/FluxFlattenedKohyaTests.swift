import Foundation
import Testing
@testable import LoRACore
@testable import SafeTensors

/// scripts/make-fixtures.py group `flux`: `kohya-flattened.safetensors` is `lora/` as a kohya file in
/// diffusers' flattened module names (`lora_transformer_transformer_blocks_0_attn_to_q`, kohya's
/// alphas). diffusers 0.42.1 cannot load it (case.json `diffusers_flattened_kohya_loader_on_single_file`):
/// its mixture conversion names the block modules outside attention by their block alone.
@Suite("Image models: kohya Flux LoRAs in diffusers' flattened names (lora_transformer_…) into BFL single files")
struct FluxFlattenedKohyaTests {
    static let flattened = flux + "/kohya-flattened.safetensors"

    @Test("kohya-flattened.safetensors into single.safetensors is merged-single.safetensors byte for byte (into the ComfyUI file under its prefix), into transformer/ merged/; verify passes")
    func mergesIntoEveryLayout() throws {
        let dir = temporaryDirectory()
        let report = try mergeImageModel(fluxSingle, [Self.flattened], into: dir + "/s.safetensors")
        // 44 diffusers modules update 30 BFL tensors.
        #expect(report.files == ["s.safetensors"] && report.mergedTensors == 30)
        #expect(FileManager.default.contents(atPath: dir + "/s.safetensors") == FileManager.default.contents(atPath: flux + "/merged-single.safetensors"))
        _ = try mergeImageModel(FluxComfyUITests.comfySingle, [Self.flattened], into: dir + "/c.safetensors")
        let comfy = try Checkpoint(path: dir + "/c.safetensors"), expected = try Checkpoint(path: flux + "/merged-single.safetensors")
        for name in expected.names {
            #expect(Array(try comfy.bytes(of: FluxComfyUITests.prefix + name)) == Array(try expected.bytes(of: name)), "\(name)")
        }
        _ = try mergeImageModel(fluxTransformer, [Self.flattened], into: dir + "/t")
        #expect(FileManager.default.contents(atPath: dir + "/t/diffusion_pytorch_model.safetensors")
            == FileManager.default.contents(atPath: FluxMergeTests.oracle))
        var v = VerifyOptions(base: fluxSingle, adapters: [(Self.flattened, 1)], merged: flux + "/merged-single.safetensors")
        v.threads = 2
        #expect(try Verify.run(v).passed)
    }

    @Test("A flattened name no diffusers module of the file has exactly (a suffix of one), rows of another module, and a LoHa on part of a fused tensor are refused by name, nothing written")
    func refusals() throws {
        let dir = temporaryDirectory()
        let toQ = "lora_transformer_transformer_blocks_0_attn_to_q"
        let cases: [(String, (String) -> Bool, (String) -> String, [String])] = [
            // `blocks_0_attn_to_q` ends transformer_blocks_0_attn_to_q: never matched by a suffix.
            ("suffix", { $0.hasPrefix(toQ + ".") }, { $0.replacingOccurrences(of: toQ, with: "lora_transformer_blocks_0_attn_to_q") },
             ["lora_transformer_blocks_0_attn_to_q", "flattened name"]),
            ("rows", { $0.hasPrefix("lora_transformer_single_transformer_blocks_0_proj_mlp.") },
             { $0.replacingOccurrences(of: "single_transformer_blocks_0_proj_mlp", with: "transformer_blocks_0_attn_to_q") },
             [toQ, "lora_B has 64 rows", "double_blocks.0.img_attn.qkv.weight"]),
        ]
        for (name, keep, rename, messages) in cases {
            try rewriteTensors(Self.flattened, to: dir + "/\(name).safetensors", keep: keep, rename: rename)
            #expect {
                try mergeImageModel(fluxSingle, [dir + "/\(name).safetensors"], into: dir + "/\(name)-out.safetensors")
            } throws: { error in messages.allSatisfy { "\(error)".contains($0) } }
        }
        func values(_ n: Int) -> [Float] { (0..<n).map { Float($0 % 5) / 20 } }
        try ChunkedMergeTests.write([(toQ + ".hada_w1_a", [16, 2], values(32)), (toQ + ".hada_w1_b", [2, 16], values(32)),
                                     (toQ + ".hada_w2_a", [16, 2], values(32)), (toQ + ".hada_w2_b", [2, 16], values(32))], to: dir + "/loha.safetensors")
        #expect {
            try mergeImageModel(fluxSingle, [dir + "/loha.safetensors"], into: dir + "/loha-out.safetensors")
        } throws: { error in "\(error)".contains(toQ) && "\(error)".contains("DoRA too; no bias, LoHa") }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix("-out.safetensors") } == [])
    }
}
