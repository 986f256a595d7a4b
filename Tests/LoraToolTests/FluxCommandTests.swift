import Foundation
import Testing

@Suite("lora-tool on Flux (README's commands on the flux fixtures)")
struct FluxCommandTests {
    static let flux = "Tests/LoRACoreTests/ImageFixtures/flux"

    @Test("The README's Flux commands: inspect names flux and the transformer; merges into transformer/ and the BFL single file (one file, kohya and diffusers LoRAs) verify; ComfyUI's checkpoint and LoRA; conversions both ways")
    func readmeCommands() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cli-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let flux = Self.flux, kohya = flux + "/kohya.safetensors", single = flux + "/single.safetensors"
        let (s1, o1, _) = try run(["inspect", kohya])
        #expect(s1 == 0 && o1.contains("family          flux (lora_unet_double_blocks_/single_blocks_ keys)"), "\(o1)")
        #expect(o1.contains("component       transformer: 30 modules, rank 2, 4, alpha 3, 4, 6, 8"), "\(o1)")
        let (s2, _, e2) = try run(["merge", "--base", flux + "/transformer", "--adapter", kohya, "--output", dir + "/flux-transformer", "--quiet"])
        #expect(s2 == 0 && FileManager.default.fileExists(atPath: dir + "/flux-transformer/diffusion_pytorch_model.safetensors"), "\(e2)")
        let (s3, o3, _) = try run(["verify", "--base", flux + "/transformer", "--adapter", kohya, "--merged", dir + "/flux-transformer"])
        #expect(s3 == 0 && o3.contains("PASS: 112 tensors (44 merged"), "\(o3)")
        let (s4, o4, _) = try run(["inspect", single])
        #expect(s4 == 0 && o4.contains("family    flux (BFL single file (double_blocks.0.img_attn.qkv.weight))"), "\(o4)")
        let (s5, o5, e5) = try run(["merge", "--base", single, "--adapter", kohya, "--output", dir + "/flux-single.safetensors"])
        #expect(s5 == 0 && o5.contains("in 1 files"), "\(o5)\(e5)")
        var isDir: ObjCBool = true
        #expect(FileManager.default.fileExists(atPath: dir + "/flux-single.safetensors", isDirectory: &isDir) && !isDir.boolValue)
        let (s6, o6, _) = try run(["verify", "--base", single, "--adapter", kohya, "--merged", dir + "/flux-single.safetensors"])
        #expect(s6 == 0 && o6.contains("PASS: 84 tensors (30 merged"), "\(o6)")
        let (s7, o7, e7) = try run(["merge", "--base", single, "--adapter", flux + "/lora", "--output", dir + "/flux-single-diffusers.safetensors"])
        #expect(s7 == 0 && o7.contains("in 1 files"), "\(o7)\(e7)")
        #expect(FileManager.default.contents(atPath: dir + "/flux-single-diffusers.safetensors") == FileManager.default.contents(atPath: flux + "/merged-single.safetensors"))
        let (s7b, o7b, _) = try run(["verify", "--base", single, "--adapter", flux + "/lora", "--merged", dir + "/flux-single-diffusers.safetensors"])
        #expect(s7b == 0 && o7b.contains("PASS: 84 tensors (30 merged"), "\(o7b)")
        let comfy = flux + "/comfy-single.safetensors", comfyLoRA = flux + "/comfy-lora.safetensors"
        let (c1, oc1, _) = try run(["inspect", comfy])
        #expect(c1 == 0 && oc1.contains("family    flux (BFL single file (model.diffusion_model.double_blocks.0.img_attn.qkv.weight))"), "\(oc1)")
        let (c2, oc2, ec2) = try run(["merge", "--base", comfy, "--adapter", comfyLoRA, "--output", dir + "/flux-comfy.safetensors"])
        #expect(c2 == 0 && oc2.contains("in 1 files"), "\(oc2)\(ec2)")
        let (c3, oc3, _) = try run(["verify", "--base", comfy, "--adapter", comfyLoRA, "--merged", dir + "/flux-comfy.safetensors"])
        #expect(c3 == 0 && oc3.contains("PASS: 84 tensors (30 merged"), "\(oc3)")
        let (c4, oc4, ec4) = try run(["merge", "--base", comfy, "--adapter", flux + "/lora", "--output", dir + "/flux-comfy-diffusers.safetensors"])
        #expect(c4 == 0 && oc4.contains("in 1 files"), "\(oc4)\(ec4)")
        #expect(FileManager.default.contents(atPath: dir + "/flux-comfy.safetensors") == FileManager.default.contents(atPath: dir + "/flux-comfy-diffusers.safetensors"))
        let (s8, o8, e8) = try run(["convert", kohya, "--to", "diffusers", "--base", flux + "/transformer", "--output", dir + "/flux-kohya-diffusers"])
        #expect(s8 == 0 && o8.contains("modules  44, scales 0.75, 1, 1.5, 2"), "\(o8)\(e8)")
        let (s9, o9, e9) = try run(["convert", flux + "/lora", "--to", "kohya", "--output", dir + "/flux-lora-kohya.safetensors"])
        #expect(s9 == 0 && o9.contains("30 kohya modules"), "\(o9)\(e9)")
    }
}
