import Foundation
import Testing
@testable import LoRACore
@testable import SafeTensors

@Suite("Image models: merges into SD 1.x single-file (LDM) checkpoints")
struct SingleFileMergeTests {
    @Test("The single file merged with the diffusers LoRA is one file equal to diffusers' merge converted to LDM names: 0 ulp, the base's metadata, other tensors byte for byte")
    func equalsDiffusersMerge() throws {
        let out = temporaryDirectory() + "/out.safetensors"
        let report = try mergeImageModel(sd1Single, [sd1 + "/lora"], into: out, checksums: true)
        var isDir: ObjCBool = true
        #expect(FileManager.default.fileExists(atPath: out, isDirectory: &isDir) && !isDir.boolValue)
        #expect(report.mergedTensors == 70 && report.files == ["out.safetensors"])
        #expect(report.sha256["out.safetensors"] == (try SHA256.file(atPath: out)))
        #expect(try worstUlps(out, sd1SingleOracle) == 0)
        let merged = try Checkpoint(path: out), base = try Checkpoint(path: sd1Single)
        #expect(merged.metadata.map { $0.map { "\($0.key)=\($0.value)" } } == base.metadata.map { $0.map { "\($0.key)=\($0.value)" } })
        #expect(merged.metadata?.contains { $0.key == "modelspec.architecture" } == true)
        let changed = try base.names.filter { try Array(base.bytes(of: $0)) != Array(merged.bytes(of: $0)) }
        #expect(changed.count == 70)
        #expect(changed.allSatisfy { $0.hasPrefix("model.diffusion_model.") || $0.hasPrefix("cond_stage_model.transformer.text_model.encoder.") })
        #expect(changed.contains("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"))
    }

    @Test("The kohya file of the same deltas (LoCon convs included) writes the same bytes as the diffusers file")
    func kohyaEqualsDiffusers() throws {
        let dir = temporaryDirectory()
        _ = try mergeImageModel(sd1Single, [sd1 + "/lora"], into: dir + "/a.safetensors")
        _ = try mergeImageModel(sd1Single, [sd1 + "/kohya.safetensors"], into: dir + "/b.safetensors")
        #expect(FileManager.default.contents(atPath: dir + "/a.safetensors") == FileManager.default.contents(atPath: dir + "/b.safetensors"))
    }

    @Test("verify accepts the single-file merge and names the tensor of a changed element")
    func verifySingleFile() throws {
        let dir = temporaryDirectory()
        _ = try mergeImageModel(sd1Single, [sd1 + "/kohya.safetensors"], into: dir + "/out.safetensors")
        var v = VerifyOptions(base: sd1Single, adapters: [(sd1 + "/kohya.safetensors", 1)], merged: dir + "/out.safetensors")
        v.threads = 2
        let report = try Verify.run(v)
        #expect(report.passed)
        #expect(report.files.map(\.status) == [.equal])
        let tensor = "model.diffusion_model.output_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"
        let base = try Checkpoint(path: sd1Single)
        try rewriteSafeTensors(dir + "/out.safetensors", to: dir + "/changed.safetensors", metadata: base.metadata, flip: tensor)
        v.merged = dir + "/changed.safetensors"
        #expect(try Verify.run(v).failures.map(\.tensor) == [tensor])
        // The metadata is the base's: transformers' {"format": "pt"} alone is a difference.
        try rewriteSafeTensors(dir + "/out.safetensors", to: dir + "/meta.safetensors", metadata: [("format", "pt")])
        v.merged = dir + "/meta.safetensors"
        let files = try Verify.run(v).files
        #expect(files.map(\.status) == [.differs])
        #expect(files.first?.detail?.contains("modelspec.architecture") == true)
    }

    @Test("inspect names the single file's family sd1")
    func inspectFamily() throws {
        let family = try Inspect.run(path: sd1Single).imageModel?.family
        #expect(family?.name == "sd1")
        #expect(family?.evidence.contains("attn2.to_k input width 8") == true)
    }

    @Test("A module that maps to no key of the single file is refused by name; nothing is written")
    func unmappedModuleRefused() throws {
        let dir = temporaryDirectory()
        // A kohya file whose one module, resnet 5 of down block 0, the tiny UNet does not have.
        let kohya = dir + "/k.safetensors"
        let w = try SafeTensorsWriter(path: kohya, tensors: [
            TensorInfo(name: "lora_unet_down_blocks_0_resnets_5_conv1.lora_down.weight", dtype: .float16, shape: [1, 8, 3, 3]),
            TensorInfo(name: "lora_unet_down_blocks_0_resnets_5_conv1.lora_up.weight", dtype: .float16, shape: [8, 1, 1, 1]),
        ], metadata: nil)
        while let t = w.nextTensor { try [UInt8](repeating: 0, count: t.byteCount).withUnsafeBytes { try w.write(t.name, bytes: $0) } }
        try w.finish()
        let error = #expect(throws: LoRACoreError.self) { try mergeImageModel(sd1Single, [kohya], into: dir + "/out.safetensors") }
        #expect(error?.errorDescription?.hasPrefix("module 'lora_unet_down_blocks_0_resnets_5_conv1': no base module matches") == true, "\(String(describing: error))")
        #expect(error?.errorDescription?.contains(sd1Single) == true)
        #expect(!FileManager.default.fileExists(atPath: dir + "/out.safetensors"))
    }

    @Test("The output must be NAME.safetensors; an existing file is replaced only with --force")
    func outputRules() throws {
        let dir = temporaryDirectory()
        #expect(throws: LoRACoreError.invalidRequest("\(sd1Single) is a single-file checkpoint, merged into one file: give --output NAME.safetensors")) {
            try mergeImageModel(sd1Single, [sd1 + "/lora"], into: dir + "/out")
        }
        _ = try mergeImageModel(sd1Single, [sd1 + "/lora"], into: dir + "/out.safetensors")
        #expect(throws: SafeTensorsError.self) { try mergeImageModel(sd1Single, [sd1 + "/lora"], into: dir + "/out.safetensors") }
        _ = try mergeImageModel(sd1Single, [sd1 + "/lora"], into: dir + "/out.safetensors", force: true)
        #expect(try worstUlps(dir + "/out.safetensors", sd1SingleOracle) == 0)
    }
}
