import Foundation
import Testing

@Suite("lora-tool on image models (README's commands on the sd1 and sdxl fixtures)")
struct ImageModelCommandTests {
    static let sd1 = "Tests/LoRACoreTests/ImageFixtures/sd1"

    @Test("The README's image-model commands: inspect names family, dialect and component targets; merges into the pipeline and unet/ verify")
    func readmeCommands() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cli-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let sd1 = Self.sd1
        let (s1, o1, _) = try run(["inspect", sd1 + "/pipeline"])
        #expect(s1 == 0 && o1.contains("family     sd1 (model_index.json _class_name StableDiffusionPipeline, unet cross_attention_dim 8)"), "\(o1)")
        #expect(o1.contains("component  unet: UNet2DConditionModel, 208 tensors"))
        let (s2, o2, _) = try run(["inspect", sd1 + "/lora", "--json"])
        #expect(s2 == 0 && o2.contains(#""family": "sd1""#) && o2.contains(#""dialect": "diffusers LoRA""#), "\(o2)")
        let (s3, _, e3) = try run(["merge", "--base", sd1 + "/pipeline", "--adapter", sd1 + "/lora", "--output", dir + "/merged", "--quiet"])
        #expect(s3 == 0, "\(e3)")
        let (s4, o4, e4) = try run(["merge", "--base", sd1 + "/pipeline", "--adapter", sd1 + "/kohya.safetensors", "--output", dir + "/kohya", "--verify", "--quiet"])
        #expect(s4 == 0 && o4.contains("unet/diffusion_pytorch_model.safetensors"), "\(e4)")
        let (s5, _, e5) = try run(["merge", "--base", sd1 + "/pipeline/unet", "--adapter", sd1 + "/kohya-unet.safetensors", "--output", dir + "/unet", "--quiet"])
        #expect(s5 == 0 && FileManager.default.fileExists(atPath: dir + "/unet/diffusion_pytorch_model.safetensors"), "\(e5)")
        let (s6, o6, _) = try run(["verify", "--base", sd1 + "/pipeline", "--adapter", sd1 + "/lora", "--merged", dir + "/merged"])
        #expect(s6 == 0 && o6.contains("PASS: 228 tensors (70 merged"), "\(o6)")
        let (s7, o7, e7) = try run(["convert", sd1 + "/lora", "--to", "kohya", "--output", dir + "/lora-kohya.safetensors"])
        #expect(s7 == 0 && o7.contains("modules  70, scales 0.75, 1.5, 3"), "\(o7)\(e7)")
        let (s8, o8, e8) = try run(["convert", sd1 + "/kohya.safetensors", "--to", "diffusers", "--base", sd1 + "/pipeline", "--output", dir + "/kohya-diffusers"])
        #expect(s8 == 0 && o8.contains("modules  70, scales 0.75, 1.5, 3"), "\(o8)\(e8)")
    }

    @Test("The README's single-file commands: inspect names sd1, merge writes one file, verify passes; a directory --output is refused in one line")
    func singleFileCommands() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cli-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let single = Self.sd1 + "/single.safetensors", kohya = Self.sd1 + "/kohya.safetensors"
        let (s1, o1, _) = try run(["inspect", single])
        #expect(s1 == 0 && o1.contains("family    sd1 (LDM single file"), "\(o1)")
        let (s2, o2, e2) = try run(["merge", "--base", single, "--adapter", kohya, "--output", dir + "/sd1-single.safetensors"])
        #expect(s2 == 0 && o2.contains(" 70 tensors: ") && o2.contains("in 1 files"), "\(o2)\(e2)")
        var isDir: ObjCBool = true
        #expect(FileManager.default.fileExists(atPath: dir + "/sd1-single.safetensors", isDirectory: &isDir) && !isDir.boolValue)
        let (s3, o3, _) = try run(["verify", "--base", single, "--adapter", kohya, "--merged", dir + "/sd1-single.safetensors"])
        #expect(s3 == 0 && o3.contains("PASS: 320 tensors (70 merged"), "\(o3)")
        let (s4, o4, e4) = try run(["merge", "--base", single, "--adapter", kohya, "--output", dir + "/folder"])
        #expect(s4 == 1 && o4.isEmpty && e4 == "error: \(single) is a single-file checkpoint, merged into one file: give --output NAME.safetensors\n", "\(e4)")
    }

    @Test("The README's SDXL and SD 2.x commands: inspect names sdxl, the kohya SDXL file merges into the single file (one file) and the pipeline, verify passes with the diffusers file; the SD 2.x single file merges into one file")
    func sdxlCommands() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cli-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let sdxl = "Tests/LoRACoreTests/ImageFixtures/sdxl", single = sdxl + "/single.safetensors", kohya = sdxl + "/kohya.safetensors"
        let (s1, o1, _) = try run(["inspect", single])
        #expect(s1 == 0 && o1.contains("family    sdxl (sgm single file"), "\(o1)")
        let (s2, o2, e2) = try run(["merge", "--base", single, "--adapter", kohya, "--output", dir + "/sdxl-single.safetensors"])
        #expect(s2 == 0 && o2.contains(" 91 tensors: ") && o2.contains("in 1 files"), "\(o2)\(e2)")
        let (s3, o3, _) = try run(["verify", "--base", single, "--adapter", sdxl + "/lora", "--merged", dir + "/sdxl-single.safetensors"])
        #expect(s3 == 0 && o3.contains("PASS: 421 tensors (91 merged"), "\(o3)")
        let (s4, o4, e4) = try run(["merge", "--base", sdxl + "/pipeline", "--adapter", kohya, "--output", dir + "/sdxl-kohya"])
        #expect(s4 == 0 && o4.contains(" 93 tensors: ") && FileManager.default.fileExists(atPath: dir + "/sdxl-kohya/text_encoder_2/model.safetensors"), "\(o4)\(e4)")
        let (s6, o6, e6) = try run(["convert", sdxl + "/lora", "--to", "kohya", "--base", sdxl + "/pipeline", "--output", dir + "/sdxl-lora-kohya.safetensors"])
        #expect(s6 == 0 && o6.contains("modules  93, scales 0.5, 1.5, 2, 2.5, 3"), "\(o6)\(e6)")
        let sd2 = "Tests/LoRACoreTests/ImageFixtures/sd2"
        let (s5, o5, e5) = try run(["merge", "--base", sd2 + "/single.safetensors", "--adapter", sd2 + "/lora", "--output", dir + "/sd2-single.safetensors"])
        #expect(s5 == 0 && o5.contains(" 39 tensors: ") && o5.contains("in 1 files"), "\(o5)\(e5)")
    }

    @Test("unet/ with a LoRA that also targets the text encoder: exit 1, one error line naming the module and the component")
    func foreignComponent() throws {
        let (status, out, err) = try run(["merge", "--base", Self.sd1 + "/pipeline/unet", "--adapter", Self.sd1 + "/kohya.safetensors", "--output", "/tmp/never-written-\(UUID().uuidString)"])
        #expect(status == 1 && out.isEmpty)
        #expect(err.hasPrefix("error: module 'lora_te_text_model_encoder_layers_0_mlp_fc1': targets the text_encoder component"), "\(err)")
        #expect(err.split(separator: "\n").count == 1)
    }
}
