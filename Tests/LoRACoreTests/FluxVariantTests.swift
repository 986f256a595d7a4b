import Foundation
import Testing
@testable import LoRACore
@testable import SafeTensors

let fluxVariants = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("ImageFixtures/flux-variants").path

/// scripts/make-fixtures.py group `flux-variants`: flux/kohya.safetensors' tensors as an XLabs Flux LoRA
/// (`xlabs.safetensors`) and a fal Kontext one (`kontext.safetensors`), and diffusers' fuse of each (fp32,
/// rounded once to bf16) as a transformer folder (`<name>-merged/`) and a BFL single file (`<name>-merged-single.safetensors`).
@Suite("Image models: XLabs and fal Kontext Flux LoRAs into transformer folders, pipelines, BFL and ComfyUI single files")
struct FluxVariantTests {
    static let cases = [("xlabs", "XLabs Flux LoRA", 24), ("kontext", "fal Kontext Flux LoRA (PEFT keys in BFL names)", 41)]

    @Test("Each file into transformer/ and single.safetensors equals diffusers' fuse byte for byte; into ComfyUI's checkpoint the same tensors under model.diffusion_model.; a pipeline folder's transformer/ the same bytes")
    func merges() throws {
        let dir = temporaryDirectory(), comfy = try Checkpoint(path: flux + "/comfy-single.safetensors")
        for (name, _, modules) in Self.cases {
            let lora = fluxVariants + "/\(name).safetensors", expected = fluxVariants + "/\(name)-merged/diffusion_pytorch_model.safetensors"
            let report = try mergeImageModel(fluxTransformer, [lora], into: dir + "/\(name)-t")
            #expect(report.mergedTensors == modules, "\(name)")
            #expect(FileManager.default.contents(atPath: dir + "/\(name)-t/diffusion_pytorch_model.safetensors") == FileManager.default.contents(atPath: expected), "\(name)")
            _ = try mergeImageModel(fluxSingle, [lora], into: dir + "/\(name)-s.safetensors")
            #expect(FileManager.default.contents(atPath: dir + "/\(name)-s.safetensors")
                == FileManager.default.contents(atPath: fluxVariants + "/\(name)-merged-single.safetensors"), "\(name)")
            _ = try mergeImageModel(flux + "/comfy-single.safetensors", [lora], into: dir + "/\(name)-c.safetensors")
            let merged = try Checkpoint(path: dir + "/\(name)-c.safetensors"), single = try Checkpoint(path: fluxVariants + "/\(name)-merged-single.safetensors")
            #expect(merged.names == comfy.names)
            for tensor in single.names {
                #expect(Array(try merged.bytes(of: "model.diffusion_model." + tensor)) == Array(try single.bytes(of: tensor)), "\(name): \(tensor)")
            }
            let pipeline = dir + "/\(name)-pipeline"
            try FileManager.default.createDirectory(atPath: pipeline, withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: fluxTransformer, toPath: pipeline + "/transformer")
            try Data(#"{"_class_name": "FluxPipeline", "_diffusers_version": "0.42.1", "transformer": ["diffusers", "FluxTransformer2DModel"]}"#.utf8)
                .write(to: URL(fileURLWithPath: pipeline + "/model_index.json"))
            _ = try mergeImageModel(pipeline, [lora], into: dir + "/\(name)-p")
            #expect(FileManager.default.contents(atPath: dir + "/\(name)-p/transformer/diffusion_pytorch_model.safetensors") == FileManager.default.contents(atPath: expected))
        }
    }

    @Test("An XLabs file under diffusers' diffusion_model. prefix merges as the file without it")
    func xlabsPrefix() throws {
        let dir = temporaryDirectory()
        try rewriteTensors(fluxVariants + "/xlabs.safetensors", to: dir + "/p.safetensors", rename: { "diffusion_model." + $0 })
        _ = try mergeImageModel(fluxSingle, [dir + "/p.safetensors"], into: dir + "/s.safetensors")
        #expect(FileManager.default.contents(atPath: dir + "/s.safetensors") == FileManager.default.contents(atPath: fluxVariants + "/xlabs-merged-single.safetensors"))
    }

    @Test("The modules are diffusers' conversion: a fused module's parts share its A, each its rows of B, s = 1")
    func modules() throws {
        let xlabs = try Adapter(path: fluxVariants + "/xlabs.safetensors")
        let qkv = xlabs.modules.filter { $0.aName == "single_blocks.1.processor.qkv_lora.down.weight" }
        #expect(qkv.map(\.module) == ["transformer.single_transformer_blocks.1.attn.to_k", "transformer.single_transformer_blocks.1.attn.to_q",
                                      "transformer.single_transformer_blocks.1.attn.to_v"])
        #expect(qkv.map(\.bRows) == [[16..<32], [0..<16], [32..<48]] && Set(xlabs.modules.map(\.scale)) == [1])
        let kontext = try Adapter(path: fluxVariants + "/kontext.safetensors")
        let linear1 = kontext.modules.filter { $0.bName == "base_model.model.single_blocks.0.linear1.lora_B.weight" }
        #expect(linear1.map(\.bRows) == [[16..<32], [0..<16], [32..<48], [48..<112]] && linear1.map(\.outFeatures) == [16, 16, 16, 64])
        #expect(kontext.modules.contains { $0.module == "transformer.proj_out" && $0.aName == "base_model.model.final_layer.linear.lora_A.weight" })
    }

    @Test("inspect names each dialect and its transformer target; verify passes diffusers' merge and names the tensor of a changed element")
    func inspectAndVerify() throws {
        let dir = temporaryDirectory()
        for (name, dialect, modules) in Self.cases {
            let lora = fluxVariants + "/\(name).safetensors"
            let report = try Inspect.run(path: lora)
            #expect(report.adapter?.dialect == dialect)
            #expect(report.imageModel?.family?.name == "flux" && report.imageModel?.targets.map(\.component) == ["transformer"])
            #expect(report.imageModel?.targets.map(\.modules) == [modules])
            #expect(try Inspect.run(path: lora, base: fluxSingle).base?.problems == [])
            var v = VerifyOptions(base: fluxSingle, adapters: [(lora, 1)], merged: fluxVariants + "/\(name)-merged-single.safetensors")
            v.threads = 2
            #expect(try Verify.run(v).passed, "\(name)")
            let tensor = "double_blocks.1.txt_attn.qkv.weight"
            try rewriteSafeTensors(fluxVariants + "/\(name)-merged-single.safetensors", to: dir + "/\(name).safetensors", metadata: [("format", "pt")], flip: tensor)
            v.merged = dir + "/\(name).safetensors"
            #expect(try Verify.run(v).failures.map(\.tensor) == [tensor], "\(name)")
            var t = VerifyOptions(base: fluxTransformer, adapters: [(lora, 1)], merged: fluxVariants + "/\(name)-merged")
            t.threads = 2
            #expect(try Verify.run(t).passed, "\(name)")
        }
    }

    @Test("convert --to diffusers writes the conversion, which merges into single.safetensors as the file does; --to kohya joins kontext's fused parts (merging to the same bytes) and refuses XLabs' linear1 q, k, v without its MLP rows by name; resize refuses a part of a fused module by name")
    func convertAndResize() throws {
        let dir = temporaryDirectory()
        for (name, _, modules) in Self.cases {
            #expect(try Convert.run(ConvertOptions(adapter: fluxVariants + "/\(name).safetensors", to: .diffusers, output: dir + "/\(name)")).modules == modules)
            _ = try mergeImageModel(fluxSingle, [dir + "/\(name)"], into: dir + "/\(name).safetensors")
            #expect(FileManager.default.contents(atPath: dir + "/\(name).safetensors")
                == FileManager.default.contents(atPath: fluxVariants + "/\(name)-merged-single.safetensors"), "\(name)")
        }
        // fal's 27 BFL modules: 2 × 10 double-block ones, 2 × 3 single-block ones and final_layer.linear.
        _ = try Convert.run(ConvertOptions(adapter: fluxVariants + "/kontext.safetensors", to: .kohya, output: dir + "/k.safetensors"))
        let kohya = try Checkpoint(path: dir + "/k.safetensors").names
        #expect(kohya.count == 27 * 3 && kohya.contains("lora_unet_single_blocks_1_linear1.lora_up.weight") && kohya.contains("lora_unet_final_layer_linear.alpha"))
        _ = try mergeImageModel(fluxSingle, [dir + "/k.safetensors"], into: dir + "/k-merged.safetensors")
        #expect(FileManager.default.contents(atPath: dir + "/k-merged.safetensors") == FileManager.default.contents(atPath: fluxVariants + "/kontext-merged-single.safetensors"))
        #expect { try Convert.run(ConvertOptions(adapter: fluxVariants + "/xlabs.safetensors", to: .kohya, output: dir + "/x.safetensors")) } throws: {
            "\($0)".contains("single_transformer_blocks.0.attn.to_q") && "\($0)".contains("without the rest of")
        }
        #expect { try Resize.run(ResizeOptions(adapter: fluxVariants + "/xlabs.safetensors", output: dir + "/r", rule: .fixed(1))) } throws: {
            "\($0)".contains("transformer.single_transformer_blocks.0.attn.to_k") && "\($0)".contains("some rows of a fused module")
        }
    }

    @Test("A tensor diffusers' converters do not take (another XLabs processor leaf, a fal module outside its list, a bias), a module missing a factor, a qkv B that does not split in thirds and lora_adapter_metadata are refused by name, nothing written")
    func refusals() throws {
        let dir = temporaryDirectory(), xlabs = fluxVariants + "/xlabs.safetensors", kontext = fluxVariants + "/kontext.safetensors"
        let cases: [(String, String, (String) -> Bool, (String) -> String, [String])] = [
            ("leaf", xlabs, { _ in true }, { $0.replacingOccurrences(of: "double_blocks.0.processor.proj_lora2", with: "double_blocks.0.processor.out_lora") },
             ["double_blocks.0.processor.out_lora.down.weight", "not an XLabs Flux LoRA tensor", "leaf.safetensors"]),
            ("img-in", kontext, { _ in true }, { $0.replacingOccurrences(of: "final_layer.linear", with: "img_in") },
             ["base_model.model.img_in.lora_A.weight", "not a fal Kontext Flux LoRA tensor", "img-in.safetensors"]),
            ("bias", kontext, { _ in true }, { $0.replacingOccurrences(of: "final_layer.linear.lora_A.weight", with: "final_layer.linear.lora_B.bias") },
             ["base_model.model.final_layer.linear.lora_B.bias", "no biases", "bias.safetensors"]),
            ("half", xlabs, { $0 != "double_blocks.1.processor.qkv_lora2.up.weight" }, { $0 }, ["double_blocks.1.processor.qkv_lora2", "needs both factors"]),
        ]
        for (name, source, keep, rename, message) in cases {
            try rewriteTensors(source, to: dir + "/\(name).safetensors", keep: keep, rename: rename)
            #expect {
                try mergeImageModel(fluxSingle, [dir + "/\(name).safetensors"], into: dir + "/\(name)-out.safetensors")
            } throws: { error in message.allSatisfy { "\(error)".contains($0) } }
        }
        // A qkv up of 47 rows (not thirds): the file's own tensors with one row dropped.
        let ckpt = try Checkpoint(path: xlabs)
        let infos = ckpt.names.map { n -> TensorInfo in
            let i = ckpt.info(n)!
            return TensorInfo(name: n, dtype: i.dtype, shape: n == "double_blocks.0.processor.qkv_lora1.up.weight" ? [i.shape[0] - 1, i.shape[1]] : i.shape)
        }
        let w = try SafeTensorsWriter(path: dir + "/rows.safetensors", tensors: infos, metadata: [("lora_adapter_metadata", "{}")])
        while let t = w.nextTensor { try w.write(t.name, bytes: UnsafeRawBufferPointer(rebasing: try ckpt.bytes(of: t.name).prefix(t.byteCount))) }
        try w.finish()
        #expect { try Adapter(path: dir + "/rows.safetensors") } throws: { "\($0)".contains("lora_adapter_metadata") }
        let v = try SafeTensorsWriter(path: dir + "/thirds.safetensors", tensors: infos, metadata: nil)
        while let t = v.nextTensor { try v.write(t.name, bytes: UnsafeRawBufferPointer(rebasing: try ckpt.bytes(of: t.name).prefix(t.byteCount))) }
        try v.finish()
        #expect { try Adapter(path: dir + "/thirds.safetensors") } throws: {
            "\($0)".contains("double_blocks.0.processor.qkv_lora1") && "\($0)".contains("47 rows, which do not split")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix("-out.safetensors") } == [])
    }
}
