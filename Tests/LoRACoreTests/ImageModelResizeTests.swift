import Foundation
import Testing
@testable import LoRACore
@testable import SafeTensors

@Suite("resize of image-model LoRAs (kohya and diffusers format), in their own dialect and names")
struct ImageModelResizeTests {
    /// scripts/make-fixtures.py group `image-resize`: per input and module, the scale and torch's float64
    /// singular values of ΔW = s·B·A.
    static func spectra(_ input: String) throws -> [String: (scale: Double, s: [Double])] {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("ImageFixtures/resize/spectra.json").path
        let json = try JSONParser.parse(Array(FileManager.default.contents(atPath: path)!))
        return Dictionary(uniqueKeysWithValues: json[input]!.objectMembers!.map { ($0.key, ($0.value["scale"]!.doubleValue!, $0.value["s"]!.arrayValue!.map { $0.doubleValue! })) })
    }

    /// s·B·A of `module` in fp64, row-major (out, in) with kernels flattened.
    static func delta(_ adapter: Adapter, _ module: AdapterModule) throws -> [Double] {
        let a = try TensorData.floats(adapter.checkpoint, module.aName).map(Double.init), b = try TensorData.floats(adapter.checkpoint, module.bName).map(Double.init)
        let (r, cols) = (module.rank, module.inFeatures)
        return (0..<(module.outFeatures * cols)).map { e in
            let (i, j) = (e / cols, e % cols)
            return module.scale * (0..<r).reduce(0.0) { $0 + b[i * r + $1] * a[$1 * cols + j] }
        }
    }

    /// Resizes `input` to `rank` and checks every module against torch's spectrum of its ΔW: the kept rank, the
    /// scale, the energy reported, and ‖ΔW − s'·B'·A'‖²_F = Σ_{i≥k} σᵢ², which only the best rank-k approximation
    /// reaches (Eckart–Young). Returns the output adapter.
    func checkResize(_ input: String, fixture: String, rank: Int, output: String) throws -> Adapter {
        let report = try Resize.run(ResizeOptions(adapter: input, output: output, rule: .fixed(rank)))
        let original = try Adapter(path: input), resized = try Adapter(path: output), spectra = try Self.spectra(fixture)
        #expect(resized.format == original.format && resized.modules.map(\.module) == original.modules.map(\.module))
        #expect(report.map(\.module) == original.modules.map(\.module) && spectra.count == original.modules.count)
        for (m, (r, line)) in zip(original.modules, zip(resized.modules, report)) {
            let (scale, s) = spectra[m.module]!
            let k = min(rank, m.rank), total = s.reduce(0) { $0 + $1 * $1 }, tail = s.dropFirst(k).reduce(0) { $0 + $1 * $1 }
            #expect(r.rank == k && line.rank == k && line.fromRank == m.rank, "\(m.module)")
            #expect(m.scale == scale && r.scale == m.scale, "\(m.module): scale \(r.scale), was \(m.scale)")
            #expect(abs(line.energyKept - (total - tail) / total) <= 1e-5, "\(m.module)")
            let x = try Self.delta(original, m), y = try Self.delta(resized, r)
            let residual = zip(x, y).reduce(0.0) { $0 + ($1.0 - $1.1) * ($1.0 - $1.1) }
            #expect(abs(residual - tail) <= 1e-5 * total, "\(m.module): residual \(residual), Σ tail σ² \(tail)")
        }
        return resized
    }

    @Test("A kohya SD file (LoCon convolutions included) resized to rank 1: each module's s·B·A is the best rank-1 approximation of its ΔW (torch's singular values), alpha = s·1, names and metadata kept, ss_network_dim 1")
    func kohyaRank1() throws {
        let out = temporaryDirectory() + "/r.safetensors"
        let resized = try checkResize(sd1 + "/kohya.safetensors", fixture: "sd1/kohya.safetensors", rank: 1, output: out)
        #expect(resized.dialect == "kohya LoRA (sd-scripts)")
        let file = try Checkpoint(path: out), input = try Checkpoint(path: sd1 + "/kohya.safetensors")
        #expect(file.names == input.names)
        #expect(file.info("lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight")?.shape == [1, 8, 3, 3])
        let metadata = Dictionary(uniqueKeysWithValues: (file.metadata ?? []).map { ($0.key, $0.value) })
        #expect(metadata["ss_network_dim"] == "1" && metadata["ss_network_alpha"] == "Dynamic" && metadata["ss_network_module"] == "networks.lora")
    }

    @Test("A diffusers-format SDXL LoRA resized to rank 1 stays diffusers format (unet/text_encoder/text_encoder_2 keys), each module the best rank-1 approximation with its scale kept (lora_alpha = s·1)")
    func diffusersRank1() throws {
        let out = temporaryDirectory() + "/r"
        let resized = try checkResize(sdxl + "/lora", fixture: "sdxl/lora", rank: 1, output: out)
        #expect(FileManager.default.fileExists(atPath: out + "/pytorch_lora_weights.safetensors"))
        #expect(resized.modules.allSatisfy { $0.rank == 1 })
    }

    @Test("A resize to each module's own rank is the identity up to rounding: s·B'·A' within 1e-5 of the largest |ΔW| elementwise, for kohya and diffusers files")
    func sameRankIsIdentity() throws {
        let dir = temporaryDirectory()
        for (input, output) in [(sd1 + "/kohya.safetensors", dir + "/k.safetensors"), (sdxl + "/lora", dir + "/d")] {
            _ = try Resize.run(ResizeOptions(adapter: input, output: output, rule: .fixed(64)))
            let original = try Adapter(path: input), resized = try Adapter(path: output)
            for (m, r) in zip(original.modules, resized.modules) {
                #expect(r.rank == m.rank && r.scale == m.scale, "\(m.module)")
                let x = try Self.delta(original, m), y = try Self.delta(resized, r)
                let largest = x.map(abs).max()!
                #expect(zip(x, y).allSatisfy { abs($0 - $1) <= 1e-5 * largest }, "\(m.module)")
            }
        }
    }

    @Test("A DoRA image-model LoRA is refused naming the module; nothing is written")
    func doraRefused() throws {
        let out = temporaryDirectory() + "/r.safetensors"
        let error = #expect(throws: LoRACoreError.self) { try Resize.run(ResizeOptions(adapter: sd1 + "/kohya-dora.safetensors", output: out, rule: .fixed(1))) }
        #expect(error?.errorDescription?.contains("is DoRA: resize of an image-model LoRA takes plain LoRA modules") == true, "\(String(describing: error))")
        #expect(!FileManager.default.fileExists(atPath: out))
    }
}
