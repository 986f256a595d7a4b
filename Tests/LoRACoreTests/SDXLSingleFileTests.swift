import Foundation
import LoRAKernels
import Testing
@testable import LoRACore
@testable import SafeTensors

@Suite("Image models: SDXL single files (sgm) and kohya SDXL LoRAs")
struct SDXLSingleFileTests {
    /// The fixture's fused OpenCLIP q/k/v of layer 0 and its text projection.
    static let inProj = "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"
    static let textProjection = "conditioner.embedders.1.model.text_projection"

    /// Largest fp16 ulp distance between the tensors of `component` in a merged folder and the expected
    /// single file read under diffusers names (`LDMComponentStore`); text_projection (stored transposed)
    /// is compared with the base folder's, which no LoRA changes.
    func folderUlps(_ folder: String, component: String, file: String) throws -> Int {
        let merged = try Checkpoint(path: folder), single = try Checkpoint(path: sdxlSingleOracle)
        let expected = LDMComponentStore(single, map: try LDMNameMap(keys: single.names, path: sdxlSingleOracle), component: component)
        #expect(merged.names == expected.names, "\(component)")
        let base = try Checkpoint(path: sdxlPipeline + "/" + component + "/" + file)
        var worst = 0
        for name in merged.names {
            let theirs = name == "text_projection.weight" ? try base.bytes(of: name) : try expected.bytes(of: name)
            worst = max(worst, ulpDistance(try merged.bytes(of: name), theirs, dtype: .float16))
        }
        return worst
    }

    @Test("The single file merged with the diffusers LoRA is one file within 1 ulp of diffusers' merge (fp32, rounded once), with the base's names, order and metadata; text_encoder_2's q/k/v land in in_proj_weight's thirds")
    func diffusersLoRA() throws {
        let out = temporaryDirectory() + "/out.safetensors"
        let report = try mergeImageModel(sdxlSingle, [sdxl + "/lora"], into: out)
        #expect(report.files == ["out.safetensors"] && report.mergedTensors == 91)
        #expect(try worstUlps(out, sdxlSingleOracle) == 0)
        let merged = try Checkpoint(path: out), base = try Checkpoint(path: sdxlSingle)
        #expect(merged.names == base.names)
        #expect(merged.metadata.map { $0.map { "\($0.key)=\($0.value)" } } == base.metadata.map { $0.map { "\($0.key)=\($0.value)" } })
        let changed = Set(try base.names.filter { try Array(base.bytes(of: $0)) != Array(merged.bytes(of: $0)) })
        #expect(changed.count == 91)
        #expect(changed.contains(Self.inProj) && !changed.contains(Self.inProj.replacingOccurrences(of: "_weight", with: "_bias")))
        #expect(changed.contains("model.diffusion_model.label_emb.0.0.weight"))
        #expect(changed.contains("model.diffusion_model.input_blocks.3.1.transformer_blocks.1.attn2.to_k.weight"))
        // Every third of in_proj changes (q, k and v are all adapted), each exactly as diffusers' separate tensors.
        let rows = base.info(Self.inProj)!.shape[0] / 3, rowBytes = base.info(Self.inProj)!.byteCount / (3 * rows)
        let b = Array(try base.bytes(of: Self.inProj)), m = Array(try merged.bytes(of: Self.inProj))
        for third in 0..<3 {
            let range = (third * rows * rowBytes)..<((third + 1) * rows * rowBytes)
            #expect(b[range] != m[range], "third \(third)")
        }
    }

    @Test("The kohya SDXL file (sgm UNet names, lora_te1_/lora_te2_, its own .alpha per module) writes the same bytes as the diffusers file")
    func kohyaEqualsDiffusers() throws {
        let dir = temporaryDirectory()
        _ = try mergeImageModel(sdxlSingle, [sdxl + "/lora"], into: dir + "/a.safetensors")
        _ = try mergeImageModel(sdxlSingle, [sdxl + "/kohya.safetensors"], into: dir + "/b.safetensors")
        #expect(FileManager.default.contents(atPath: dir + "/a.safetensors") == FileManager.default.contents(atPath: dir + "/b.safetensors"))
    }

    @Test("Where diffusers' kohya loader drops a module's .alpha (to_v: alpha 1, r 2) lora-tool merges alpha/r = 0.5, not diffusers' 1.5; CLIP-L's q/v, which diffusers does not load from the kohya file, are merged")
    func kohyaAlphaAsWritten() throws {
        let out = temporaryDirectory() + "/out.safetensors"
        _ = try mergeImageModel(sdxlSingle, [sdxl + "/kohya.safetensors"], into: out)
        let kohya = try Checkpoint(path: sdxl + "/kohya.safetensors")
        let module = "lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_v"
        let alpha = Double(try TensorData.floats(kohya, module + ".alpha")[0]), rank = kohya.info(module + ".lora_down.weight")!.shape[0]
        let diffusers = try diffusersScales("kohya", fixture: sdxl)["unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_v"]!
        #expect(alpha / Double(rank) == 0.5 && diffusers == 1.5)
        // W + s·B·A in fp32, rounded once, for both scales: the output is the first, and the second is far from it.
        let key = "model.diffusion_model.input_blocks.3.1.transformer_blocks.0.attn1.to_v.weight"
        let w = try TensorData.floats(try Checkpoint(path: sdxlSingle), key), merged = try TensorData.floats(try Checkpoint(path: out), key)
        let a = try TensorData.floats(kohya, module + ".lora_down.weight"), b = try TensorData.floats(kohya, module + ".lora_up.weight")
        let cols = a.count / rank
        func merge(_ s: Double) -> [Float] {
            w.indices.map { e in
                let (i, j) = (e / cols, e % cols)
                var acc: Float = 0
                for k in 0..<rank { acc = acc.addingProduct(b[i * rank + k], a[k * cols + j]) }
                return FloatCodec.roundTrip(w[e] + acc * Float(s), format: .f16)
            }
        }
        let ours = merge(alpha / Double(rank)), theirs = merge(diffusers)
        #expect(zip(ours, merged).allSatisfy { abs($0 - $1) <= abs($0) * 0x1p-10 })
        #expect(zip(theirs, merged).contains { abs($0 - $1) > abs($0) * 0x1p-9 })
        // Not loaded by diffusers from the kohya file, merged by lora-tool as from the diffusers file.
        let notLoaded = try JSONParser.parse(Array(FileManager.default.contents(atPath: sdxl + "/case.json")!))["kohya_not_loaded"]!.arrayValue!.map { $0.stringValue! }
        #expect(notLoaded == ["text_encoder.encoder.layers.0.self_attn.q_proj", "text_encoder.encoder.layers.0.self_attn.v_proj"])
        let q = "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"
        #expect(try TensorData.floats(try Checkpoint(path: out), q) != TensorData.floats(try Checkpoint(path: sdxlSingle), q))
        #expect(try worstUlps(out, sdxlSingleOracle) == 0)
    }

    @Test("kohya SDXL merges into the diffusers pipeline folder (which verify passes) and, its UNet part, into unet/: every tensor equal to the expected merge")
    func kohyaIntoFolders() throws {
        let dir = temporaryDirectory()
        _ = try mergeImageModel(sdxlPipeline, [sdxl + "/kohya.safetensors"], into: dir + "/pipe")
        for (component, file) in [("unet", "diffusion_pytorch_model.safetensors"), ("text_encoder", "model.safetensors"), ("text_encoder_2", "model.safetensors")] {
            #expect(try folderUlps(dir + "/pipe/" + component + "/" + file, component: component, file: file) == 0, "\(component)")
        }
        // Its lora_unet_ half, the LoRA people merge into a unet/ folder.
        let kohya = try Checkpoint(path: sdxl + "/kohya.safetensors")
        let unetOnly = kohya.names.filter { $0.hasPrefix("lora_unet_") }
        let w = try SafeTensorsWriter(path: dir + "/kohya-unet.safetensors", tensors: unetOnly.map { kohya.info($0)! }, metadata: nil)
        while let t = w.nextTensor { try w.write(t.name, bytes: try kohya.bytes(of: t.name)) }
        try w.finish()
        var v = VerifyOptions(base: sdxlPipeline, adapters: [(sdxl + "/kohya.safetensors", 1)], merged: dir + "/pipe")
        v.threads = 2
        #expect(try Verify.run(v).passed)
        let report = try mergeImageModel(sdxlPipeline + "/unet", [dir + "/kohya-unet.safetensors"], into: dir + "/unet")
        #expect(report.mergedTensors == 85)
        #expect(try folderUlps(dir + "/unet/diffusion_pytorch_model.safetensors", component: "unet", file: "diffusion_pytorch_model.safetensors") == 0)
    }

    @Test("verify passes the expected merge for both LoRA files and names in_proj_weight when one of its elements changes")
    func verify() throws {
        let dir = temporaryDirectory()
        for adapter in [sdxl + "/lora", sdxl + "/kohya.safetensors"] {
            var v = VerifyOptions(base: sdxlSingle, adapters: [(adapter, 1)], merged: sdxlSingleOracle)
            v.threads = 2
            let report = try Verify.run(v)
            #expect(report.passed, "\(adapter)")
            #expect(report.entries.filter { $0.kind == .merged }.count == 91)
        }
        let base = try Checkpoint(path: sdxlSingle)
        try rewriteSafeTensors(sdxlSingleOracle, to: dir + "/changed.safetensors", metadata: base.metadata, flip: Self.inProj)
        var v = VerifyOptions(base: sdxlSingle, adapters: [(sdxl + "/kohya.safetensors", 1)], merged: dir + "/changed.safetensors")
        v.threads = 2
        #expect(try Verify.run(v).failures.map(\.tensor) == [Self.inProj])
    }

    @Test("inspect names the single file's family sdxl, and the kohya file's family and dialect; --base single.safetensors finds every module")
    func inspect() throws {
        let family = try Inspect.run(path: sdxlSingle).imageModel?.family
        #expect(family?.name == "sdxl")
        #expect(family?.evidence.contains("conditioner.embedders.1.model.transformer.resblocks.") == true)
        let report = try Inspect.run(path: sdxl + "/kohya.safetensors", base: sdxlSingle)
        #expect(report.imageModel?.family?.name == "sdxl")
        #expect(report.adapter?.dialect == "kohya LoRA (sd-scripts)")
        #expect(report.base?.problems == [])
        #expect(try Inspect.run(path: sdxl + "/lora", base: sdxlSingle).base?.problems == [])
    }

    @Test("A LoRA on text_encoder_2's text_projection, which the single file stores transposed, is refused by name; nothing is written")
    func textProjectionRefused() throws {
        let dir = temporaryDirectory()
        let file = dir + "/tp.safetensors"
        let w = try SafeTensorsWriter(path: file, tensors: [
            TensorInfo(name: "text_encoder_2.text_projection.lora_A.weight", dtype: .float16, shape: [1, 12]),
            TensorInfo(name: "text_encoder_2.text_projection.lora_B.weight", dtype: .float16, shape: [8, 1]),
        ], metadata: nil)
        while let t = w.nextTensor { try [UInt8](repeating: 0, count: t.byteCount).withUnsafeBytes { try w.write(t.name, bytes: $0) } }
        try w.finish()
        #expect(throws: LoRACoreError.baseMismatch(
            module: "text_encoder_2.text_projection",
            detail: "targets text_encoder_2 'text_projection', which the single file \(sdxlSingle) stores transposed as '\(Self.textProjection)': a LoRA on it is not merged")) {
            try mergeImageModel(sdxlSingle, [file], into: dir + "/out.safetensors")
        }
        #expect(!FileManager.default.fileExists(atPath: dir + "/out.safetensors"))
        // The same file merges into the pipeline folder, where text_projection is diffusers' own Linear.
        #expect(try mergeImageModel(sdxlPipeline, [file], into: dir + "/pipe").mergedTensors == 1)
    }

    @Test("A LoHa on text_encoder_2's q_proj, a third of the single file's in_proj_weight, is refused by name (only a LoRA, PEFT's DoRA too, merges into part of a fused tensor)")
    func lohaOnFusedThirdRefused() throws {
        let dir = temporaryDirectory()
        let file = dir + "/loha.safetensors", module = "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"
        let w = try SafeTensorsWriter(path: file, tensors: ["hada_w1_a", "hada_w2_a"].map { TensorInfo(name: module + "." + $0, dtype: .float16, shape: [12, 1]) }
            + ["hada_w1_b", "hada_w2_b"].map { TensorInfo(name: module + "." + $0, dtype: .float16, shape: [1, 12]) }, metadata: nil)
        while let t = w.nextTensor { try [UInt8](repeating: 0, count: t.byteCount).withUnsafeBytes { try w.write(t.name, bytes: $0) } }
        try w.finish()
        let error = #expect(throws: LoRACoreError.self) { try mergeImageModel(sdxlSingle, [file], into: dir + "/out.safetensors") }
        #expect(error?.errorDescription?.hasPrefix("module '\(module)': targets rows 0..<12 of '\(Self.inProj)': only a LoRA (PEFT's DoRA too; no bias, LoHa") == true, "\(String(describing: error))")
        #expect(!FileManager.default.fileExists(atPath: dir + "/out.safetensors"))
    }

    @Test("convert --to kohya of the SDXL diffusers LoRA with its pipeline, its unet/ or its single file as --base writes sd-scripts' SDXL names (sgm UNet, lora_te1_/lora_te2_) and alphas: the kohya fixture value for value, the same bytes from all three; without one of them it is refused naming them")
    func convertToKohya() throws {
        let dir = temporaryDirectory()
        var o = ConvertOptions(adapter: sdxl + "/lora", to: .kohya, output: dir + "/k.safetensors")
        o.base = sdxlPipeline
        #expect(try Convert.run(o).modules == 93)
        try expectSameValues(dir + "/k.safetensors", sdxl + "/kohya.safetensors")
        for (i, base) in [sdxlPipeline + "/unet", sdxlSingle].enumerated() {
            o.base = base
            o.output = dir + "/k\(i).safetensors"
            #expect(try Convert.run(o).modules == 93)
            #expect(FileManager.default.contents(atPath: o.output) == FileManager.default.contents(atPath: dir + "/k.safetensors"), "\(base)")
        }
        let refusal = "\(sdxl)/lora is an SDXL LoRA: sd-scripts names its UNet in sgm form, whose block numbers depend on the UNet's layers per block; give as --base its diffusers pipeline folder, its unet/ folder or its SDXL single file (sd_xl_base_1.0.safetensors)"
        o.base = nil
        o.output = dir + "/no-base.safetensors"
        #expect(throws: LoRACoreError.invalidRequest(refusal)) { try Convert.run(o) }
        o.base = sdxlPipeline + "/text_encoder"
        #expect(throws: LoRACoreError.invalidRequest(refusal + " (\(sdxlPipeline)/text_encoder is none of these)")) { try Convert.run(o) }
        o.base = sd1Single
        #expect(throws: LoRACoreError.invalidRequest(refusal + " (\(sd1Single) is none of these)")) { try Convert.run(o) }
        #expect(!FileManager.default.fileExists(atPath: dir + "/no-base.safetensors"))
    }

    @Test("A fused in_proj_weight whose rows do not split in thirds is refused naming the module and the tensor; nothing is written")
    func unevenFusedTensorRefused() throws {
        let dir = temporaryDirectory()
        func write(_ path: String, _ tensors: [(String, [Int])]) throws {
            let w = try SafeTensorsWriter(path: path, tensors: tensors.map { TensorInfo(name: $0.0, dtype: .float16, shape: $0.1) }, metadata: nil)
            while let t = w.nextTensor { try [UInt8](repeating: 0, count: t.byteCount).withUnsafeBytes { try w.write(t.name, bytes: $0) } }
            try w.finish()
        }
        try write(dir + "/base.safetensors", [("model.diffusion_model.input_blocks.0.0.weight", [2, 2]), (Self.inProj, [7, 2])])
        let module = "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj"
        try write(dir + "/lora.safetensors", [(module + ".lora_A.weight", [1, 2]), (module + ".lora_B.weight", [2, 1])])
        #expect(throws: LoRACoreError.baseMismatch(
            module: module, detail: "targets part 0 of '\(Self.inProj)' in \(dir)/base.safetensors, whose shape [7, 2] does not split in the ratio [1, 1, 1]")) {
            try mergeImageModel(dir + "/base.safetensors", [dir + "/lora.safetensors"], into: dir + "/out.safetensors")
        }
        #expect(!FileManager.default.fileExists(atPath: dir + "/out.safetensors"))
    }
}
