import Foundation
import Testing
@testable import LoRACore
import LoRAGraph
@testable import SafeTensors

// Shared by the image-model tests.

/// scripts/make-fixtures.py group `sd`: a tiny SD-1.5-shaped pipeline saved by diffusers 0.42.1
/// (fp16), its LoRA from `save_lora_weights`, the same tensors without metadata, the same deltas in
/// sd-scripts names, and diffusers' own fuse of the LoRA on an fp32 copy rounded once to fp16.
let sd1 = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("ImageFixtures/sd1").path
let sd1Pipeline = sd1 + "/pipeline"
let sd1Oracle = sd1 + "/merged"
/// `pipeline/` and `merged/` as original-layout (LDM) single files, loaded back by diffusers' `from_single_file`.
let sd1Single = sd1 + "/single.safetensors"
let sd1SingleOracle = sd1 + "/merged-single.safetensors"

/// scripts/make-fixtures.py group `sdxl`: a tiny SDXL pipeline (fp16), the same as an sgm single
/// file (loaded back by `from_single_file`), a diffusers-format LoRA with metadata, the same deltas as
/// a kohya SDXL file (sgm UNet names, `lora_te1_`/`lora_te2_`), and diffusers' fuse of the LoRA on
/// an fp32 copy rounded once to fp16, as an sgm single file.
let sdxl = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("ImageFixtures/sdxl").path
let sdxlPipeline = sdxl + "/pipeline"
let sdxlSingle = sdxl + "/single.safetensors"
let sdxlSingleOracle = sdxl + "/merged-single.safetensors"

/// scripts/make-fixtures.py group `sd2`: a tiny SD 2.x pipeline (fp16) as an original-layout single
/// file with the OpenCLIP text encoder (`cond_stage_model.model.`, loaded back by `from_single_file`),
/// a diffusers-format LoRA with q/k/v on the text encoder, and diffusers' fuse of it (fp32, rounded
/// once to fp16) written the same way.
let sd2 = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("ImageFixtures/sd2").path
let sd2Single = sd2 + "/single.safetensors"
let sd2SingleOracle = sd2 + "/merged-single.safetensors"

/// scripts/make-fixtures.py group `sdxl-refiner`: a tiny SDXL refiner pipeline (fp16, OpenCLIP as its one text
/// encoder, `text_encoder_2`) as an sgm single file (`conditioner.embedders.0.model.`, loaded back by
/// `from_single_file`), a diffusers-format LoRA (unet and text_encoder_2, q/k/v included), the same deltas as a
/// kohya file (sgm UNet names, `lora_te2_`), and diffusers' fuse of the LoRA (fp32, rounded once) written the same way.
let sdxlRefiner = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("ImageFixtures/sdxl-refiner").path
let sdxlRefinerSingle = sdxlRefiner + "/single.safetensors"
let sdxlRefinerSingleOracle = sdxlRefiner + "/merged-single.safetensors"

/// Copies the safetensors file `source` to `destination` with `metadata` and, when `flip` names a
/// tensor, an exponent bit of its element 0 flipped (its second byte: a 16-bit value's high byte).
func rewriteSafeTensors(_ source: String, to destination: String, metadata: [(key: String, value: String)]?, flip: String? = nil) throws {
    let ckpt = try Checkpoint(path: source)
    let w = try SafeTensorsWriter(path: destination, tensors: ckpt.names.map { ckpt.info($0)! }, metadata: metadata)
    while let t = w.nextTensor {
        var bytes = Array(try ckpt.bytes(of: t.name))
        if t.name == flip { bytes[1] ^= 0x08 }
        try bytes.withUnsafeBytes { try w.write(t.name, bytes: $0) }
    }
    try w.finish()
}

/// The scales diffusers resolved for every module of `file` (case.json of `fixture`).
func diffusersScales(_ file: String, fixture: String = sd1) throws -> [String: Double] {
    let json = try JSONParser.parse(Array(FileManager.default.contents(atPath: fixture + "/case.json")!))
    return Dictionary(uniqueKeysWithValues: json["diffusers_scales"]![file]!.objectMembers!.map { ($0.key, $0.value.doubleValue!) })
}

/// Expects two safetensors files to hold the same tensor names with the same values (of any float dtypes).
func expectSameValues(_ a: String, _ b: String) throws {
    let x = try Checkpoint(path: a), y = try Checkpoint(path: b)
    #expect(x.names == y.names)
    for name in y.names { #expect(try TensorData.floats(x, name) == TensorData.floats(y, name), "\(name)") }
}

/// Largest ulp distance between two fp16 files' tensors (same names and shapes required).
func worstUlps(_ a: String, _ b: String) throws -> Int {
    let x = try Checkpoint(path: a), y = try Checkpoint(path: b)
    #expect(x.names == y.names)
    var worst = 0
    for name in x.names {
        #expect(x.info(name)!.shape == y.info(name)!.shape, "\(name)")
        worst = max(worst, ulpDistance(try x.bytes(of: name), try y.bytes(of: name), dtype: x.info(name)!.dtype))
    }
    return worst
}

func mergeImageModel(_ base: String, _ adapters: [String], into output: String, force: Bool = false, checksums: Bool = false) throws -> MergeReport {
    var o = MergeOptions(base: base, adapters: adapters.map { ($0, 1.0) }, output: output)
    o.threads = 2
    o.force = force
    o.checksums = checksums
    return try Merge.run(o)
}
