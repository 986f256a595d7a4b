import Foundation
import LoRACore
import LoRAKernels
import SafeTensors

/// The LoHa and LoKr adapters of the benchmark (`adapter-loha/`, `adapter-lokr/`): PEFT layouts on
/// the same seven projections as `adapter/`, the "r = 16 equivalents" the issue measures against the
/// r = 16 LoRA merge:
///
///     LoHa (peft_type LOHA, r 16, alpha 32): X.hada_w1_a [out, 16], X.hada_w1_b [16, in],
///                                            X.hada_w2_a [out, 16], X.hada_w2_b [16, in]
///     LoKr (peft_type LOKR, r 16, alpha 32): X.lokr_w1 [a, c] full, X.lokr_w2_a [out/a, 16],
///                                            X.lokr_w2_b [16, in/c], (a, out/a) and (c, in/c) the
///                                            factor pairs PEFT's `factorization(dim, -1)` picks
///
/// fp32 values uniform in ±0.01 (LoKr's w1 in ±1, so kron(w1, w2) has the LoRA's magnitude).
extension Workload {
    /// Writes both adapters under `dir` (each skipped when already there).
    func generateTypeAdapters(in dir: String) throws {
        var rng = SplitMix64(seed: 47)
        if !FileManager.default.fileExists(atPath: dir + "/adapter-loha/adapter_config.json") {
            try writeTypeAdapter(at: dir + "/adapter-loha", peftType: "LOHA", rng: &rng) { out, inFeatures in
                [("hada_w1_a", [out, 16]), ("hada_w1_b", [16, inFeatures]), ("hada_w2_a", [out, 16]), ("hada_w2_b", [16, inFeatures])]
            }
        }
        if !FileManager.default.fileExists(atPath: dir + "/adapter-lokr/adapter_config.json") {
            try writeTypeAdapter(at: dir + "/adapter-lokr", peftType: "LOKR", rng: &rng) { out, inFeatures in
                let (a, c) = (ConvertLycoris.factorization(out, -1).0, ConvertLycoris.factorization(inFeatures, -1).0)
                return [("lokr_w1", [a, c]), ("lokr_w2_a", [out / a, 16]), ("lokr_w2_b", [16, inFeatures / c])]
            }
        }
    }

    /// One adapter: `roles(out, in)` gives each projection's tensors (suffix, shape).
    private func writeTypeAdapter(at adapter: String, peftType: String, rng: inout SplitMix64, roles: (Int, Int) -> [(String, [Int])]) throws {
        let partial = adapter + ".partial"
        try? FileManager.default.removeItem(atPath: partial)
        try FileManager.default.createDirectory(atPath: partial, withIntermediateDirectories: true)
        var tensors: [TensorInfo] = []
        for t in baseTensors() where t.shape.count == 2 && Workload.projections.contains(where: { t.name.hasSuffix($0 + ".weight") }) {
            let module = "base_model.model." + t.name.dropLast(".weight".count)
            tensors += roles(t.shape[0], t.shape[1]).map { TensorInfo(name: module + "." + $0.0, dtype: .float32, shape: $0.1) }
        }
        tensors.sort { utf8Precedes($0.name, $1.name) }
        let w = try SafeTensorsWriter(path: partial + "/adapter_model.safetensors", tensors: tensors)
        while let t = w.nextTensor {
            let range: Float = t.name.hasSuffix("lokr_w1") ? 1 : 0.01
            let values = (0..<t.elementCount!).map { _ in rng.uniform() * range }
            try values.withUnsafeBytes { try w.write(t.name, bytes: $0) }
        }
        try w.finish()
        let config = """
            {"peft_type": "\(peftType)", "r": 16, "alpha": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], "rank_dropout": 0.0, "module_dropout": 0.0, "use_effective_conv2d": false\(peftType == "LOKR" ? ", \"decompose_both\": false, \"decompose_factor\": -1" : ""), "task_type": "CAUSAL_LM"}

            """
        _ = FileManager.default.createFile(atPath: partial + "/adapter_config.json", contents: Data(config.utf8))
        try? FileManager.default.removeItem(atPath: adapter)
        try FileManager.default.moveItem(atPath: partial, toPath: adapter)
    }
}
