import Foundation
import Testing
@testable import LoRACore
@testable import SafeTensors

@Suite("combine of image-model LoRAs: their own format and names, merged as the inputs merge together")
struct ImageModelCombineTests {
    static func combine(_ adapters: [(String, Double)], method: CombineMethod = .cat, to: Adapter.Format? = nil, base: String? = nil,
                        rank: Int? = nil, output: String) throws -> CombineReport {
        var o = CombineOptions(adapters: adapters, method: method, output: output)
        o.to = to
        o.base = base
        o.rule = rank.map { .fixed($0) }
        return try Combine.run(o)
    }

    /// Merges into the SD 1.x pipeline: `adapters` with their weights, and `combined` at weight 1.
    static func mergedBoth(_ adapters: [(String, Double)], combined: String, in dir: String) throws -> (together: String, combined: String) {
        var o = MergeOptions(base: sd1Pipeline, adapters: adapters, output: dir + "/together")
        o.threads = 2
        _ = try Merge.run(o)
        _ = try mergeImageModel(sd1Pipeline, [combined], into: dir + "/combined")
        return (dir + "/together", dir + "/combined")
    }

    @Test("Two kohya SD 1.x LoRAs (one with LoCon convolutions) by cat at weights 1 and 0.5: one kohya file under sd-scripts' names, alpha = rank, that merges as the two merge together (within 1 fp16 ulp)")
    func kohyaCat() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let inputs = [(sd1 + "/kohya.safetensors", 1.0), (sd1 + "/kohya-unet.safetensors", 0.5)]
        let report = try ImageModelCombineTests.combine(inputs, output: dir + "/c.safetensors")
        #expect(report.to == "kohya")
        let a = try Adapter(path: sd1 + "/kohya.safetensors"), b = try Adapter(path: sd1 + "/kohya-unet.safetensors"), c = try Adapter(path: dir + "/c.safetensors")
        #expect(c.format == .kohya)
        #expect(ImageModelFamily.of(adapter: c)?.name == "sd1")
        #expect(c.modules.map(\.module) == Array(Set(a.modules.map(\.module) + b.modules.map(\.module))).sorted(by: utf8Precedes))
        // cat: each module's rank is the sum of its inputs' ranks, at scale 1.
        let ranks = Dictionary(a.modules.map { ($0.module, $0.rank) }, uniquingKeysWith: +).merging(b.modules.map { ($0.module, $0.rank) }, uniquingKeysWith: +)
        for m in c.modules {
            #expect(m.rank == ranks[m.module] && m.alpha == Double(m.rank), "\(m.module)")
        }
        #expect(c.modules.contains { $0.convShape != nil })
        let merged = try ImageModelCombineTests.mergedBoth(inputs, combined: dir + "/c.safetensors", in: dir)
        for component in ["unet", "text_encoder"] {
            let file = component == "unet" ? "diffusion_pytorch_model.safetensors" : "model.safetensors"
            #expect(try worstUlps("\(merged.together)/\(component)/\(file)", "\(merged.combined)/\(component)/\(file)") <= 1, "\(component)")
        }
        let metadata = Dictionary(uniqueKeysWithValues: (c.checkpoint.metadata ?? []).map { ($0.key, $0.value) })
        #expect(metadata["ss_network_dim"] == "Dynamic" || metadata["ss_network_dim"] == String(c.modules[0].rank))
    }

    @Test("A diffusers-format SD 1.x LoRA with itself by svd at weights 0.5 and 0.5: a diffusers file with lora_adapter_metadata that merges as the LoRA does")
    func diffusersSVD() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let lora = sd1 + "/lora"
        let inputs = [(lora, 0.5), (lora, 0.5)]
        let report = try ImageModelCombineTests.combine(inputs, method: .svd, output: dir + "/c")
        #expect(report.to == "diffusers")
        let c = try Adapter(path: dir + "/c")
        #expect(c.format == .diffusers && FileManager.default.fileExists(atPath: dir + "/c/pytorch_lora_weights.safetensors"))
        #expect(c.checkpoint.names.allSatisfy { $0.hasPrefix("unet.") || $0.hasPrefix("text_encoder.") })
        // Σ wᵢ·ΔW is the LoRA's ΔW, of its rank: the SVD keeps it (fp32), so the merge is the LoRA's within 1 fp16 ulp.
        let merged = try ImageModelCombineTests.mergedBoth([(lora, 1)], combined: dir + "/c", in: dir)
        #expect(try worstUlps(merged.together + "/unet/diffusion_pytorch_model.safetensors", merged.combined + "/unet/diffusion_pytorch_model.safetensors") <= 1)
        #expect(try worstUlps(merged.together + "/text_encoder/model.safetensors", merged.combined + "/text_encoder/model.safetensors") <= 1)
    }

    @Test("Inputs that do not combine are refused by name: kohya with diffusers, SD 1.x with SDXL, a language-model adapter, --to another format, --base")
    func refusals() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func refused(_ inputs: [String], to: Adapter.Format? = nil, base: String? = nil, _ words: [String]) {
            do {
                _ = try ImageModelCombineTests.combine(inputs.map { ($0, 1) }, to: to, base: base, output: dir + "/out.safetensors")
                Issue.record("combined \(inputs)")
            } catch {
                let message = (error as? LocalizedError)?.errorDescription ?? ""
                #expect(words.allSatisfy { message.contains($0) } && !message.contains("\n"), "\(message)")
            }
            #expect(!FileManager.default.fileExists(atPath: dir + "/out.safetensors"))
        }
        refused([sd1 + "/kohya.safetensors", sd1 + "/lora"], ["sd1/lora", "diffusers", "convert"])
        refused([sd1 + "/kohya.safetensors", sdxl + "/kohya.safetensors"], ["sdxl/kohya.safetensors", "sdxl", "sd1"])
        refused([sd1 + "/kohya.safetensors", "samples/tiny-llama-lora"].map { $0.hasPrefix("samples") ? URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path + "/" + $0 : $0 },
                ["tiny-llama-lora", "not an image-model LoRA"])
        refused([sd1 + "/kohya.safetensors"], to: .peft, ["--to peft", "kohya"])
        refused([sd1 + "/kohya.safetensors"], base: sd1Pipeline, ["--base"])
        refused([flux + "/kohya.safetensors", flux + "/comfy-lora.safetensors"], ["comfy-lora.safetensors", "ComfyUI"])
    }
}
