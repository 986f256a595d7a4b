import Foundation
import LoRAKernels
import SafeTensors

/// The image-model benchmark (issue 23): a Stable Diffusion UNet as diffusers saves it (`unet/`:
/// config.json and diffusion_pytorch_model.safetensors, fp16, random values) and a kohya LoRA for
/// it as sd-scripts writes one: rank 32 on every attention and feed-forward linear (`lora_down`
/// (32, in), `lora_up` (out, 32)) and rank-16 LoCon on the 3×3 convolutions of the resnets,
/// downsamplers and upsamplers (sd-scripts' `conv_dim` targets; `lora_down` (16, in, 3, 3),
/// `lora_up` (out, 16, 1, 1)), fp16 factors, `.alpha` half the rank (scale 0.5).
///
/// The UNet's names and shapes come from `ImageShapes/<name>-unet.json` (diffusers'
/// UNet2DConditionModel on the meta device, written by `scripts/make-fixtures.py bench-unets`), so
/// generating needs no torch.
struct ImageWorkload {
    let name: String
    /// What the rows' titles call it.
    let title: String

    static let sizes: [String: ImageWorkload] = [
        "sd15": ImageWorkload(name: "sd15", title: "SD 1.5 UNet (860 M parameters)"),
        "sdxl": ImageWorkload(name: "sdxl", title: "SDXL UNet (2.6 B parameters)"),
    ]

    /// The kohya module name of a diffusers module (`down_blocks.0.attentions.0.proj_in` →
    /// `lora_unet_down_blocks_0_attentions_0_proj_in`).
    static func kohyaName(_ module: String) -> String { "lora_unet_" + module.replacingOccurrences(of: ".", with: "_") }

    /// Linear weights a LoRA targets: attention projections, feed-forward layers and (SDXL's linear)
    /// proj_in/proj_out inside the transformer blocks.
    static func isLinearTarget(_ name: String, _ shape: [Int]) -> Bool {
        guard shape.count == 2, name.hasSuffix(".weight"), name.contains(".attentions.") else { return false }
        return [".to_q.", ".to_k.", ".to_v.", ".to_out.0.", ".ff.net.0.proj.", ".ff.net.2.", ".proj_in.", ".proj_out."].contains { name.contains($0) }
    }

    /// The UNet's config (JSON object) and tensors, in name order.
    func shapes() throws -> (config: Data, tensors: [TensorInfo]) {
        let file = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("ImageShapes/\(name)-unet.json")
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: file)) as! [String: Any]
        let tensors = (json["tensors"] as! [[Any]]).map { TensorInfo(name: $0[0] as! String, dtype: .float16, shape: $0[1] as! [Int]) }
        let config = try JSONSerialization.data(withJSONObject: json["config"]!, options: [.prettyPrinted, .sortedKeys])
        return (config, tensors.sorted { utf8Precedes($0.name, $1.name) })
    }

    /// Writes unet/ and lora.safetensors under `dir` (skipped when both are there).
    func generate(in dir: String) throws {
        let unet = dir + "/unet", lora = dir + "/lora.safetensors"
        if FileManager.default.fileExists(atPath: unet + "/config.json") && FileManager.default.fileExists(atPath: lora) { return }
        try? FileManager.default.removeItem(atPath: unet)
        try? FileManager.default.removeItem(atPath: lora)
        try FileManager.default.createDirectory(atPath: unet, withIntermediateDirectories: true)
        let (config, tensors) = try shapes()
        var rng = SplitMix64(seed: 23)
        let w = try SafeTensorsWriter(path: unet + "/diffusion_pytorch_model.safetensors", tensors: tensors)
        while let t = w.nextTensor {
            try ImageWorkload.halves(count: t.elementCount!, scale: t.shape.count == 1 ? 0.1 : 0.02, rng: &rng).withUnsafeBytes { try w.write(t.name, bytes: $0) }
        }
        try w.finish()
        _ = FileManager.default.createFile(atPath: unet + "/config.json", contents: config + Data("\n".utf8))

        var factors: [TensorInfo] = []
        for t in tensors where t.name.hasSuffix(".weight") {
            let module = ImageWorkload.kohyaName(String(t.name.dropLast(".weight".count)))
            if ImageWorkload.isLinearTarget(t.name, t.shape) {
                factors += [TensorInfo(name: module + ".lora_down.weight", dtype: .float16, shape: [32, t.shape[1]]),
                            TensorInfo(name: module + ".lora_up.weight", dtype: .float16, shape: [t.shape[0], 32]),
                            TensorInfo(name: module + ".alpha", dtype: .float16, shape: [])]
            } else if t.shape.count == 4, t.shape[2] == 3, t.shape[3] == 3, [".resnets.", ".downsamplers.", ".upsamplers."].contains(where: t.name.contains) {
                factors += [TensorInfo(name: module + ".lora_down.weight", dtype: .float16, shape: [16, t.shape[1], 3, 3]),
                            TensorInfo(name: module + ".lora_up.weight", dtype: .float16, shape: [t.shape[0], 16, 1, 1]),
                            TensorInfo(name: module + ".alpha", dtype: .float16, shape: [])]
            }
        }
        let l = try SafeTensorsWriter(path: lora, tensors: factors, metadata: [("ss_network_module", "networks.lora")])
        while let t = l.nextTensor {
            if t.name.hasSuffix(".alpha") {
                // Half the module's rank: 16 on the linears, 8 on the convolutions.
                let rank = factors.first { $0.name == t.name.dropLast(".alpha".count) + ".lora_down.weight" }!.shape[0]
                try ImageWorkload.halves(values: [Float(rank / 2)]).withUnsafeBytes { try l.write(t.name, bytes: $0) }
            } else {
                try ImageWorkload.halves(count: t.elementCount!, scale: 0.01, rng: &rng).withUnsafeBytes { try l.write(t.name, bytes: $0) }
            }
        }
        try l.finish()
    }

    /// `count` fp16 values uniform in ±`scale` (round to nearest even from fp32).
    static func halves(count: Int, scale: Float, rng: inout SplitMix64) -> [UInt8] {
        halves(values: (0..<count).map { _ in rng.uniform() * scale })
    }

    static func halves(values: [Float]) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: values.count * 2)
        values.withUnsafeBufferPointer { v in bytes.withUnsafeMutableBytes { FloatCodec.encode(v, format: .f16, into: $0) } }
        return bytes
    }
}
