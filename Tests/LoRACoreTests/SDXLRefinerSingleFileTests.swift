import Foundation
import Testing
@testable import LoRACore
@testable import SafeTensors

@Suite("Image models: SDXL refiner single files (OpenCLIP alone under conditioner.embedders.0.model.)")
struct SDXLRefinerSingleFileTests {
    /// The refiner's fused OpenCLIP q/k/v of layer 0.
    static let inProj = "conditioner.embedders.0.model.transformer.resblocks.0.attn.in_proj_weight"

    @Test("The refiner single file merged with the diffusers LoRA (unet, text_encoder_2) or the kohya file (sgm names, lora_te2_) equals diffusers' fuse (fp32, rounded once) byte for byte, with the base's names and metadata; q/k/v land in in_proj_weight's thirds")
    func merge() throws {
        let dir = temporaryDirectory()
        let report = try mergeImageModel(sdxlRefinerSingle, [sdxlRefiner + "/lora"], into: dir + "/a.safetensors")
        #expect(report.files == ["a.safetensors"] && report.mergedTensors == 80)
        #expect(try worstUlps(dir + "/a.safetensors", sdxlRefinerSingleOracle) == 0)
        #expect(FileManager.default.contents(atPath: dir + "/a.safetensors") == FileManager.default.contents(atPath: sdxlRefinerSingleOracle))
        _ = try mergeImageModel(sdxlRefinerSingle, [sdxlRefiner + "/kohya.safetensors"], into: dir + "/b.safetensors")
        #expect(FileManager.default.contents(atPath: dir + "/b.safetensors") == FileManager.default.contents(atPath: sdxlRefinerSingleOracle))
        let base = try Checkpoint(path: sdxlRefinerSingle), merged = try Checkpoint(path: dir + "/a.safetensors")
        let changed = Set(try base.names.filter { try Array(base.bytes(of: $0)) != Array(merged.bytes(of: $0)) })
        #expect(changed.count == 80)
        #expect(changed.contains(Self.inProj) && changed.contains("model.diffusion_model.label_emb.0.2.weight"))
        // The refiner's layout: 2 layers per block, the cross-attention level in the middle (input blocks 4, 5).
        #expect(changed.contains("model.diffusion_model.input_blocks.5.1.transformer_blocks.0.attn2.to_k.weight"))
        #expect(!changed.contains("conditioner.embedders.0.model.logit_scale"))
    }

    @Test("verify passes the expected merge for both LoRA files and names in_proj_weight when one of its elements changes")
    func verify() throws {
        for adapter in [sdxlRefiner + "/lora", sdxlRefiner + "/kohya.safetensors"] {
            var v = VerifyOptions(base: sdxlRefinerSingle, adapters: [(adapter, 1)], merged: sdxlRefinerSingleOracle)
            v.threads = 2
            let report = try Verify.run(v)
            #expect(report.passed, "\(adapter)")
            #expect(report.entries.filter { $0.kind == .merged }.count == 80)
        }
        let dir = temporaryDirectory()
        try rewriteSafeTensors(sdxlRefinerSingleOracle, to: dir + "/changed.safetensors", metadata: try Checkpoint(path: sdxlRefinerSingle).metadata, flip: Self.inProj)
        var v = VerifyOptions(base: sdxlRefinerSingle, adapters: [(sdxlRefiner + "/lora", 1)], merged: dir + "/changed.safetensors")
        v.threads = 2
        #expect(try Verify.run(v).failures.map(\.tensor) == [Self.inProj])
    }

    @Test("inspect names the refiner single file sdxl and says refiner; the LoRAs' modules all resolve against it")
    func inspect() throws {
        let family = try Inspect.run(path: sdxlRefinerSingle).imageModel?.family
        #expect(family?.name == "sdxl")
        #expect(family?.evidence == "sgm SDXL refiner single file, its one (OpenCLIP) text encoder under conditioner.embedders.0.model.")
        for adapter in [sdxlRefiner + "/lora", sdxlRefiner + "/kohya.safetensors"] {
            let report = try Inspect.run(path: adapter, base: sdxlRefinerSingle)
            #expect(report.imageModel?.family?.name == "sdxl", "\(adapter)")
            #expect(report.base?.problems == [], "\(adapter)")
        }
    }

    @Test("convert --to kohya of the refiner's diffusers LoRA with the refiner single file as --base (its UNet layout) is the kohya fixture value for value: sgm UNet names, lora_te2_, each module's alpha")
    func convertToKohya() throws {
        let dir = temporaryDirectory()
        var o = ConvertOptions(adapter: sdxlRefiner + "/lora", to: .kohya, output: dir + "/k.safetensors")
        o.base = sdxlRefinerSingle
        #expect(try Convert.run(o).modules == 82)
        try expectSameValues(dir + "/k.safetensors", sdxlRefiner + "/kohya.safetensors")
    }

    @Test("A LoRA for SDXL base's CLIP-L (lora_te1_) is refused by name: the refiner has no text_encoder; nothing is written")
    func clipLRefused() throws {
        let dir = temporaryDirectory()
        let error = #expect(throws: LoRACoreError.self) { try mergeImageModel(sdxlRefinerSingle, [sdxl + "/kohya.safetensors"], into: dir + "/out.safetensors") }
        #expect(error?.errorDescription?.hasPrefix("module 'lora_te1_text_model_encoder_layers_0_mlp_fc1': targets the text_encoder component, which \(sdxlRefinerSingle) does not have (it has text_encoder_2, unet, vae)") == true, "\(String(describing: error))")
        #expect(!FileManager.default.fileExists(atPath: dir + "/out.safetensors"))
    }
}
