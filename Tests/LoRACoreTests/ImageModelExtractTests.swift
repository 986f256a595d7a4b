import Foundation
import Testing
@testable import LoRACore
import LoRAGraph
@testable import SafeTensors

/// scripts/make-fixtures.py group `image-extract`: per sd-scripts target (found as sd-scripts finds
/// them, by module class, `--conv_dim` included) the singular values of ΔW computed by torch in
/// float64, and max |ΔW|: sd1 pipeline → merged (from_pretrained), sdxl single → merged-single (from_single_file).
private let spectraDir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("ImageFixtures/extract").path

private struct Spectrum {
    /// The sd-scripts target class the module was found in (`Transformer2DModel`, `ResnetBlock2D`, `CLIPMLP`, …).
    var block: String
    var kind: String
    var maxAbs: Double
    var s: [Double]

    /// Eckart–Young: ‖ΔW − best rank-k‖_F / ‖ΔW‖_F.
    func error(rank k: Int) -> Double {
        let total = s.reduce(0) { $0 + $1 * $1 }
        return (s.dropFirst(k).reduce(0) { $0 + $1 * $1 } / total).squareRoot()
    }
}

private func spectra(_ name: String) throws -> [String: Spectrum] {
    let json = try JSONParser.parse(Array(FileManager.default.contents(atPath: spectraDir + "/" + name + "-spectra.json")!))
    return Dictionary(uniqueKeysWithValues: json.objectMembers!.map { m in
        (m.key, Spectrum(block: m.value["block"]!.stringValue!, kind: m.value["kind"]!.stringValue!, maxAbs: m.value["max_abs"]!.doubleValue!, s: m.value["s"]!.arrayValue!.map { $0.doubleValue! }))
    })
}

private func extractImage(_ base: String, _ tuned: String, to output: String, rank: Int, convRank: Int? = nil,
                          format: Adapter.Format = .kohya, minDiff: Double? = nil) throws -> ExtractSVDReport {
    var o = ExtractSVDOptions(base: base, finetuned: tuned, output: output, rule: .fixed(rank))
    o.convRank = convRank
    o.imageFormat = format
    o.minDiff = minDiff
    o.threads = 2
    return try ExtractSVD.run(o)
}

/// Each module's relative error is torch's Eckart–Young error at its rank (fp32 SVD against float64:
/// within 1e-3 of it relative, 1e-6 absolute), its rank min(r, rank of ΔW), and the modules kept are
/// the oracle's targets whose ΔW is not zero.
private func expectEckartYoung(_ report: ExtractSVDReport, _ oracle: [String: Spectrum], rank: Int, convRank: Int?) {
    // Without --conv-rank sd-scripts wraps no module of the resnets and samplers.
    let wanted = oracle.filter { convRank != nil || !["ResnetBlock2D", "Downsample2D", "Upsample2D"].contains($0.value.block) }
    let expectedKept = Set(wanted.filter { $0.value.maxAbs > 0 }.keys)
    #expect(Set(report.modules.map { $0.module }) == expectedKept)
    #expect(report.modules.contains { $0.relativeError > 0.05 }, "the rank truncates some module")
    #expect(Set(report.skipped.map { $0.module }) == Set(wanted.filter { $0.value.maxAbs == 0 }.keys))
    for m in report.modules {
        guard let s = oracle[m.module] else { continue }
        let r = s.kind == "conv" ? convRank! : rank
        #expect(m.rank == min(r, s.s.count), "\(m.module)")
        let expected = s.error(rank: m.rank)
        #expect(abs(m.relativeError - expected) <= 1e-6 + 1e-3 * expected, "\(m.module): \(m.relativeError) vs torch \(expected)")
    }
}

private func tempDir() throws -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("image-extract-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

/// Float16 ulp of each element, as the merge's one rounding may move it.
private func ulp(_ x: Float) -> Float { Float(Float16(x).ulp) }

/// The merge of an extracted LoRA back into A reproduces B within the truncation error: per target
/// tensor ‖M − B‖_F ≤ ε·‖ΔW‖_F + ‖ulp(B)‖_F, with ε the module's reported relative error and the
/// last term the fp16 rounding of both files.
private func expectReproduces(_ merged: any TensorStore, oracle: any TensorStore, base: any TensorStore, report: ExtractSVDReport,
                              component: String) throws {
    var checked = 0
    for m in report.modules where m.module.hasPrefix(component + ".") {
        let name = String(m.module.dropFirst(component.count + 1)) + ".weight"
        let w = try TensorData.floats(base, name), b = try TensorData.floats(oracle, name), x = try TensorData.floats(merged, name)
        var diff = 0.0, delta = 0.0, rounding = 0.0
        for i in b.indices {
            diff += Double(x[i] - b[i]) * Double(x[i] - b[i])
            delta += Double(b[i] - w[i]) * Double(b[i] - w[i])
            rounding += Double(ulp(b[i])) * Double(ulp(b[i]))
        }
        #expect(diff.squareRoot() <= m.relativeError * delta.squareRoot() + rounding.squareRoot(), "\(m.module): \(diff.squareRoot()) vs ε \(m.relativeError)")
        checked += 1
    }
    #expect(checked > 0)
}

@Suite("extract between image-model checkpoints (sd-scripts' extract_lora_from_models.py)")
struct ImageModelExtractTests {
    @Test("SD 1.x pipelines: sd-scripts' targets and names in a kohya file, each error torch's Eckart–Young error")
    func sd1PipelineToKohya() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let oracle = try spectra("sd1")
        let report = try extractImage(sd1Pipeline, sd1Oracle, to: dir + "/x.safetensors", rank: 2, convRank: 3)
        expectEckartYoung(report, oracle, rank: 2, convRank: 3)
        #expect(report.modules.contains { $0.module == "unet.down_blocks.0.resnets.0.conv1" && $0.rank == 3 })

        let file = try Checkpoint(path: dir + "/x.safetensors")
        let kohyaModules = Set(file.names.filter { $0.hasSuffix(".lora_down.weight") }.map { String($0.dropLast(".lora_down.weight".count)) })
        #expect(kohyaModules.count == report.modules.count)
        #expect(kohyaModules.contains("lora_te_text_model_encoder_layers_0_self_attn_q_proj"))
        // The fixture's kohya file (sd-scripts' names for the LoRA that made `merged/`) targets a subset.
        let fixture = try Checkpoint(path: sd1 + "/kohya.safetensors")
        let trained = Set(fixture.names.filter { $0.hasSuffix(".lora_down.weight") }.map { String($0.dropLast(".lora_down.weight".count)) })
        #expect(trained.isSubset(of: kohyaModules), "\(trained.subtracting(kohyaModules).sorted())")
        for m in kohyaModules {
            let down = file.info(m + ".lora_down.weight")!.shape, up = file.info(m + ".lora_up.weight")!.shape
            #expect(try TensorData.floats(file, m + ".alpha") == [Float(down[0])], "\(m): alpha = rank")
            #expect(up[1] == down[0] && (down.count == 2 || (down.count == 4 && up.count == 4 && up[2] == 1 && up[3] == 1)), "\(m): \(down) \(up)")
        }
        let inspect = try Inspect.run(path: dir + "/x.safetensors")
        #expect(inspect.imageModel?.family?.name == "sd1")
        #expect(inspect.adapter?.dialect.hasPrefix("kohya") == true)
    }

    @Test("unet/ folders and LDM single files give the pipeline's modules and errors")
    func sd1OtherLayouts() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let oracle = try spectra("sd1")
        let unet = try extractImage(sd1Pipeline + "/unet", sd1Oracle + "/unet", to: dir + "/u.safetensors", rank: 2)
        expectEckartYoung(unet, oracle.filter { $0.key.hasPrefix("unet.") }, rank: 2, convRank: nil)
        #expect(try Checkpoint(path: dir + "/u.safetensors").names.allSatisfy { $0.hasPrefix("lora_unet_") })
        let single = try extractImage(sd1Single, sd1SingleOracle, to: dir + "/s.safetensors", rank: 2, convRank: 2)
        expectEckartYoung(single, oracle, rank: 2, convRank: 2)
        // The same deltas: the same kohya names as from the pipeline.
        _ = try extractImage(sd1Pipeline, sd1Oracle, to: dir + "/p.safetensors", rank: 2, convRank: 2)
        #expect(try Checkpoint(path: dir + "/s.safetensors").names == Checkpoint(path: dir + "/p.safetensors").names)
    }

    @Test("SDXL single files: sgm UNet names, lora_te1_/lora_te2_, OpenCLIP's fused q/k/v as three modules")
    func sdxlSingleFile() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let report = try extractImage(sdxlSingle, sdxlSingleOracle, to: dir + "/x.safetensors", rank: 1)
        expectEckartYoung(report, try spectra("sdxl"), rank: 1, convRank: nil)
        let names = Set(try Checkpoint(path: dir + "/x.safetensors").names)
        // A module whose ΔW is not zero was trained by the LoRA that made merged-single: the fixture's kohya
        // file of that LoRA (sd-scripts' SDXL names, written by the sdxl group) has it under the same name.
        let fixture = Set(try Checkpoint(path: sdxl + "/kohya.safetensors").names)
        let extracted = names.filter { $0.hasSuffix(".lora_down.weight") }
        #expect(extracted.count == report.modules.count)
        #expect(extracted.isSubset(of: fixture), "\(extracted.subtracting(fixture).sorted())")
        #expect(names.contains("lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"))
        #expect(names.contains { $0.hasPrefix("lora_unet_input_blocks_3_1_") })  // down_blocks.1.attentions.0, 1 layer per block
        #expect(try Inspect.run(path: dir + "/x.safetensors").imageModel?.family?.name == "sdxl")
    }

    @Test("A rank at least the LoRA's reproduces B by lora-tool merge (kohya and diffusers outputs alike); a lower rank within its truncation error")
    func mergeBack() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for (rank, convRank) in [(4, 4), (1, 1)] {
            let kohya = dir + "/k\(rank).safetensors", diffusers = dir + "/d\(rank).safetensors"
            let report = try extractImage(sd1Pipeline, sd1Oracle, to: kohya, rank: rank, convRank: convRank)
            _ = try extractImage(sd1Pipeline, sd1Oracle, to: diffusers, rank: rank, convRank: convRank, format: .diffusers)
            _ = try mergeImageModel(sd1Pipeline, [kohya], into: dir + "/mk\(rank)")
            _ = try mergeImageModel(sd1Pipeline, [diffusers], into: dir + "/md\(rank)")
            for (c, file) in [("unet", "diffusion_pytorch_model.safetensors"), ("text_encoder", "model.safetensors")] {
                let merged = try Checkpoint(path: dir + "/mk\(rank)/\(c)/\(file)")
                try expectReproduces(merged, oracle: Checkpoint(path: sd1Oracle + "/\(c)/\(file)"), base: Checkpoint(path: sd1Pipeline + "/\(c)/\(file)"),
                                     report: report, component: c)
                #expect(try worstUlps(dir + "/mk\(rank)/\(c)/\(file)", dir + "/md\(rank)/\(c)/\(file)") == 0)
            }
            if rank == 4 { #expect(report.modules.allSatisfy { $0.relativeError < 1e-3 }) }
            if rank == 1 { #expect(report.modules.contains { $0.relativeError > 0.1 }) }
        }
    }

    @Test("Flux single files: BFL names (fused qkv kept), merged back into the BFL file within the truncation error")
    func fluxSingleFile() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let report = try extractImage(fluxSingle, flux + "/merged-single.safetensors", to: dir + "/f.safetensors", rank: 8)
        let names = try Checkpoint(path: dir + "/f.safetensors").names
        #expect(names.contains("lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"))
        #expect(names.allSatisfy { $0.hasPrefix("lora_unet_double_blocks_") || $0.hasPrefix("lora_unet_single_blocks_") })
        #expect(try Inspect.run(path: dir + "/f.safetensors").imageModel?.family?.name == "flux")
        _ = try mergeImageModel(fluxSingle, [dir + "/f.safetensors"], into: dir + "/m.safetensors")
        // bf16: the rounding term is a bf16 ulp (2^-8 relative), bounded here by 2^3 fp16 ulps.
        let merged = try Checkpoint(path: dir + "/m.safetensors"), oracle = try Checkpoint(path: flux + "/merged-single.safetensors"), base = try Checkpoint(path: fluxSingle)
        for m in report.modules {
            let name = m.module + ".weight"
            let w = try TensorData.floats(base, name), b = try TensorData.floats(oracle, name), x = try TensorData.floats(merged, name)
            var diff = 0.0, delta = 0.0, rounding = 0.0
            for i in b.indices {
                diff += Double(x[i] - b[i]) * Double(x[i] - b[i])
                delta += Double(b[i] - w[i]) * Double(b[i] - w[i])
                let u = Double(b[i].magnitude.ulp) * 0x1p16  // a bf16 ulp: 16 fewer mantissa bits than f32
                rounding += u * u
            }
            #expect(diff.squareRoot() <= m.relativeError * delta.squareRoot() + rounding.squareRoot(), "\(m.module)")
        }
    }

    @Test("Flux transformer/ folders and BFL single files give one kohya file and one diffusers file byte for byte; --format diffusers splits fused modules exactly")
    func fluxFolders() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // flux/merged is the transformer folder diffusers saved after its fuse (config _class_name FluxTransformer2DModel).
        let report = try extractImage(fluxTransformer, flux + "/merged", to: dir + "/k.safetensors", rank: 3)
        _ = try extractImage(fluxSingle, flux + "/merged-single.safetensors", to: dir + "/s.safetensors", rank: 3)
        #expect(FileManager.default.contents(atPath: dir + "/k.safetensors") == FileManager.default.contents(atPath: dir + "/s.safetensors"))
        #expect(report.modules.contains { $0.module == "single_blocks.0.linear1" })
        _ = try extractImage(fluxTransformer, flux + "/merged", to: dir + "/d.safetensors", rank: 3, format: .diffusers)
        let d = try Checkpoint(path: dir + "/d.safetensors")
        #expect(d.names.contains("transformer.single_transformer_blocks.0.proj_mlp.lora_B.weight"))
        #expect(!d.names.contains { $0.contains("linear1") || $0.contains("qkv") })
        // Both files merge into the folder to the same bytes: the split is exact.
        _ = try mergeImageModel(fluxTransformer, [dir + "/k.safetensors"], into: dir + "/mk")
        _ = try mergeImageModel(fluxTransformer, [dir + "/d.safetensors"], into: dir + "/md")
        #expect(try worstUlps(dir + "/mk/diffusion_pytorch_model.safetensors", dir + "/md/diffusion_pytorch_model.safetensors") == 0)
        #expect(try Inspect.run(path: dir + "/d.safetensors").imageModel?.family?.name == "flux")
        // The BFL single files give the folders' diffusers file byte for byte: their fused rows split as the file's shapes say.
        _ = try extractImage(fluxSingle, flux + "/merged-single.safetensors", to: dir + "/ds.safetensors", rank: 3, format: .diffusers)
        #expect(FileManager.default.contents(atPath: dir + "/ds.safetensors") == FileManager.default.contents(atPath: dir + "/d.safetensors"))
    }

    @Test("ComfyUI Flux checkpoints (model.diffusion_model. before the BFL names, other tensors beside) give the BFL files' kohya and diffusers files byte for byte")
    func fluxComfyUI() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // Both checkpoints as ComfyUI saves them: the BFL transformer under model.diffusion_model., with a
        // CLIP-L and a VAE tensor beside it (which extract leaves alone; the tuned VAE tensor differs).
        let prefix = "model.diffusion_model.", extra = "double_blocks.0.img_attn.proj.weight"
        for (source, name) in [(fluxSingle, "base"), (flux + "/merged-single.safetensors", "tuned")] {
            let file = try Checkpoint(path: source)
            let copies = [("text_encoders.clip_l.transformer.text_model.final_layer_norm.weight", extra),
                          ("vae.decoder.conv_in.weight", name == "base" ? extra : "double_blocks.0.img_attn.qkv.weight")]
            var infos = file.names.map { n in TensorInfo(name: prefix + n, dtype: file.info(n)!.dtype, shape: file.info(n)!.shape) }
            infos += copies.map { TensorInfo(name: $0.0, dtype: file.info($0.1)!.dtype, shape: file.info($0.1)!.shape) }
            let w = try SafeTensorsWriter(path: "\(dir)/comfy-\(name).safetensors", tensors: infos, metadata: file.metadata)
            let sources = Dictionary(uniqueKeysWithValues: file.names.map { (prefix + $0, $0) } + copies)
            while let t = w.nextTensor { try w.write(t.name, bytes: try file.bytes(of: sources[t.name]!)) }
            try w.finish()
        }
        for format in [Adapter.Format.kohya, .diffusers] {
            _ = try extractImage(fluxSingle, flux + "/merged-single.safetensors", to: dir + "/bfl-\(format).safetensors", rank: 3, format: format)
            _ = try extractImage(dir + "/comfy-base.safetensors", dir + "/comfy-tuned.safetensors", to: dir + "/comfy-\(format).safetensors", rank: 3, format: format)
            #expect(FileManager.default.contents(atPath: dir + "/comfy-\(format).safetensors") == FileManager.default.contents(atPath: dir + "/bfl-\(format).safetensors"), "\(format)")
        }
    }

    @Test("sd-scripts' --min_diff: text encoders whose |ΔW| never exceeds it are left out together")
    func textEncoderThreshold() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let oracle = try spectra("sd1")
        let largest = oracle.filter { $0.key.hasPrefix("text_encoder.") }.map(\.value.maxAbs).max()!
        let out = try extractImage(sd1Pipeline, sd1Oracle, to: dir + "/a.safetensors", rank: 2, minDiff: largest)
        #expect(!out.modules.contains { $0.module.hasPrefix("text_encoder.") })
        #expect(out.skipped.filter { $0.module.hasPrefix("text_encoder.") }.count == 6)
        #expect(try Checkpoint(path: dir + "/a.safetensors").names.allSatisfy { $0.hasPrefix("lora_unet_") })
        #expect(out.notes == ["text encoders left out: their largest |ΔW| is \(Float(largest)), not above --min-diff \(largest) (sd-scripts' rule)"])
        let kept = try extractImage(sd1Pipeline, sd1Oracle, to: dir + "/b.safetensors", rank: 2, minDiff: largest * 0.999)
        #expect(kept.modules.filter { $0.module.hasPrefix("text_encoder.") }.count == 6)
        #expect(kept.notes.isEmpty)
    }

    @Test("Reruns write identical bytes")
    func deterministic() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for f in ["a", "b"] { _ = try extractImage(sd1Single, sd1SingleOracle, to: dir + "/\(f).safetensors", rank: 2, convRank: 2) }
        #expect(FileManager.default.contents(atPath: dir + "/a.safetensors") == FileManager.default.contents(atPath: dir + "/b.safetensors"))
    }

    @Test("Mixed layouts and mixed families are refused by name")
    func refusals() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func message(_ base: String, _ tuned: String, format: Adapter.Format = .kohya) -> String {
            do {
                _ = try extractImage(base, tuned, to: dir + "/x.safetensors", rank: 2, format: format)
                return "no error"
            } catch { return "\(error)" }
        }
        #expect(message(sd1Pipeline, sd1SingleOracle).contains("is a diffusers pipeline folder but \(sd1SingleOracle) is an SD single file"))
        #expect(message(sd1Pipeline + "/unet", sd1Oracle + "/text_encoder").contains("a diffusers unet/ folder but"))
        #expect(message(sd1Single, sdxlSingleOracle).contains("is sd1"))
        #expect(message(sd1Single, sdxlSingleOracle).contains("both inputs must be of one family"))
        #expect(message(fluxTransformer, sd1Oracle + "/unet").contains("is a diffusers transformer/ folder but"))
        let lm = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("ExtractFixtures/svd_rank4").path
        var o = ExtractSVDOptions(base: lm + "/base", finetuned: lm + "/finetuned", output: dir + "/x", rule: .fixed(2))
        o.convRank = 2
        #expect(throws: LoRACoreError.invalidRequest("--conv-rank applies to image models (diffusers folders, SD and Flux single files) only; \(lm)/base is not one")) { try ExtractSVD.run(o) }
        #expect(!FileManager.default.fileExists(atPath: dir + "/x.safetensors"))
    }
}
