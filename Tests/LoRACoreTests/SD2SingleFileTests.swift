import Foundation
import Testing
@testable import LoRACore
@testable import SafeTensors

@Suite("Image models: SD 2.x single files (OpenCLIP-H under cond_stage_model.model.)")
struct SD2SingleFileTests {
    static let inProj = "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"

    @Test("The OpenCLIP keys map to the CLIPTextModel's names without text_model.; q/k/v are in_proj's row thirds; logit_scale, text_projection and resblocks.23 (which diffusers skips) have none")
    func names() throws {
        let single = try Checkpoint(path: sd2Single)
        let map = try LDMNameMap(keys: single.names + ["cond_stage_model.model.transformer.resblocks.23.ln_1.weight"], path: sd2Single)
        #expect(map.components == ["text_encoder", "unet", "vae"])
        #expect(map.diffusersName(of: "cond_stage_model.model.transformer.resblocks.0.mlp.c_fc.weight")! == ("text_encoder", "encoder.layers.0.mlp.fc1.weight"))
        #expect(map.diffusersName(of: "cond_stage_model.model.positional_embedding")! == ("text_encoder", "embeddings.position_embedding.weight"))
        #expect(map.diffusersNames(of: Self.inProj).map(\.name) == ["q", "k", "v"].map { "encoder.layers.0.self_attn.\($0)_proj.weight" })
        for key in ["cond_stage_model.model.logit_scale", "cond_stage_model.model.text_projection", "cond_stage_model.model.transformer.resblocks.23.ln_1.weight"] {
            #expect(map.diffusersNames(of: key).isEmpty, "\(key)")
        }
        let store = LDMComponentStore(single, map: map, component: "text_encoder")
        let all = Array(try single.bytes(of: Self.inProj)), third = all.count / 3
        #expect(Array(try store.bytes(of: "encoder.layers.0.self_attn.v_proj.weight")) == Array(all[(2 * third)...]))
        #expect(store.info("encoder.layers.0.self_attn.k_proj.weight")?.shape == [8, 8])
    }

    @Test("The single file merged with the diffusers LoRA equals diffusers' merge bit for bit, one file with the base's names and metadata; verify passes it and names in_proj_weight when it changes; inspect names sd2")
    func mergeVerifyInspect() throws {
        let dir = temporaryDirectory()
        let report = try mergeImageModel(sd2Single, [sd2 + "/lora"], into: dir + "/out.safetensors")
        #expect(report.files == ["out.safetensors"] && report.mergedTensors == 39)
        #expect(try worstUlps(dir + "/out.safetensors", sd2SingleOracle) == 0)
        let base = try Checkpoint(path: sd2Single), merged = try Checkpoint(path: dir + "/out.safetensors")
        #expect(merged.metadata.map { $0.map { "\($0.key)=\($0.value)" } } == base.metadata.map { $0.map { "\($0.key)=\($0.value)" } })
        #expect(try Array(merged.bytes(of: Self.inProj)) != Array(base.bytes(of: Self.inProj)))
        #expect(try Array(merged.bytes(of: "cond_stage_model.model.text_projection")) == Array(base.bytes(of: "cond_stage_model.model.text_projection")))
        var v = VerifyOptions(base: sd2Single, adapters: [(sd2 + "/lora", 1)], merged: sd2SingleOracle)
        v.threads = 2
        #expect(try Verify.run(v).passed)
        try rewriteSafeTensors(sd2SingleOracle, to: dir + "/changed.safetensors", metadata: base.metadata, flip: Self.inProj)
        v.merged = dir + "/changed.safetensors"
        #expect(try Verify.run(v).failures.map(\.tensor) == [Self.inProj])
        #expect(try Inspect.run(path: sd2Single).imageModel?.family?.name == "sd2")
        #expect(try Inspect.run(path: sd2 + "/lora", base: sd2Single).base?.problems == [])
    }
}
