import Foundation
import GGUF
import SafeTensors

/// Writes LoRA factors as a llama.cpp adapter GGUF: the file `convert_lora_to_gguf.py` writes and
/// `llama-cli --lora` / `llama-export-lora` load.
///
/// Layout (the converter's): metadata `general.architecture`, `general.type` = "adapter",
/// `adapter.type` = "lora", `adapter.lora.alpha` (float32), `general.quantization_version` = 2;
/// per module, in the order of the modules' transformers names, `<gguf name>.lora_a` (A: GGUF dims
/// [in, r], torch's r×in rows) and `<gguf name>.lora_b` (B: dims [r, out]), B's rows in llama.cpp's
/// order for `attn_q`/`attn_k` of the llama architecture (`GGUFRowPermutation`, as the converter's
/// `permute` reorders a LoRA tensor's B); alignment 32, no `general.alignment`.
///
/// Scale: llama.cpp applies `alpha / r` per module (r read from B), or 1 when alpha is 0. When every
/// module's scale s equals α/r for one α (plain LoRA; rsLoRA with one rank: α = s·r), that α is
/// written and the factors are the adapter's; otherwise (alpha_pattern, rsLoRA with rank_pattern)
/// alpha is 0 and each B is multiplied by its own s in fp32 (one rounding), so every module keeps
/// its scale exactly where a single α could not express it. The converter writes `lora_alpha` as α
/// whatever `use_rslora` or `alpha_pattern` say (peer-tools.md §7).
///
/// Types: `f32` (the converter's default) writes the values exactly; `f16`/`bf16` round once to
/// nearest even; `q8_0` quantizes tensors whose rows are whole 32-value blocks (ggml's reference
/// Q8_0) and writes the others as F16, as the converter falls back.
struct GGUFAdapterSink {
    /// The model the adapter is for: its llama.cpp architecture, names and rope heads.
    struct Target: Sendable {
        var architecture: String
        var names: GGUFTensorNameMap
        /// Query and key heads, for the llama architecture's row permutation.
        var heads: (query: Int, key: Int)?
    }

    /// What was written.
    struct Written: Sendable {
        /// Nil when not hashed.
        var sha256: String?
        var bytes: Int
        var alpha: Float
        /// Modules whose B carries its scale (alpha 0).
        var folded: Bool
        var types: [String: Int]
    }

    static let alignment = 32

    let factors: [LoRAFactors]
    let target: Target
    let type: GGMLType

    /// The α every module agrees on (s·r in fp32), or nil when they differ.
    private var commonAlpha: Float? {
        let alphas = Set(factors.map { Float($0.module.scale * Double($0.module.rank)) })
        return alphas.count == 1 ? alphas.first! : nil
    }

    /// The GGUF tensors, in file order, each computed when written.
    private func tensors(alpha: Float?) throws -> [(name: String, dims: [UInt64], type: GGMLType, values: () throws -> [Float])] {
        var out: [(name: String, dims: [UInt64], type: GGMLType, values: () throws -> [Float])] = []
        for f in factors.sorted(by: { utf8Precedes($0.module.module, $1.module.module) }) {
            let m = f.module
            guard let name = target.names.ggufName(of: m.module + ".weight") else {
                throw LoRACoreError.invalidModule(module: m.module, detail: "llama.cpp's \(target.architecture) has no tensor for it")
            }
            var permutation: GGUFRowPermutation?
            if let role = target.names.ropeRole(of: name), let heads = target.heads {
                let n = role == .query ? heads.query : heads.key
                guard let p = GGUFRowPermutation(heads: n, rows: m.outFeatures) else {
                    throw LoRACoreError.invalidModule(module: m.module, detail: "\(m.outFeatures) rows cannot be llama.cpp's rope permutation of \(n) heads")
                }
                permutation = p
            }
            let scale = alpha == nil ? Float(m.scale) : nil
            out.append((name + ".lora_a", [UInt64(m.inFeatures), UInt64(m.rank)], outputType(rowLength: m.inFeatures), { f.a }))
            out.append((name + ".lora_b", [UInt64(m.rank), UInt64(m.outFeatures)], outputType(rowLength: m.rank), {
                var b = f.b
                if let scale { b = b.map { $0 * scale } }
                guard let permutation else { return b }
                var rows = [Float](repeating: 0, count: b.count)
                for g in 0..<m.outFeatures {
                    let t = permutation.transformersRow(ofGGUFRow: g)
                    rows[(g * m.rank)..<((g + 1) * m.rank)] = b[(t * m.rank)..<((t + 1) * m.rank)]
                }
                return rows
            }))
        }
        return out
    }

    /// `type`, or F16 for a Q8_0 tensor whose rows are not whole blocks (the converter's fallback).
    private func outputType(rowLength: Int) -> GGMLType {
        type.blockSize > 1 && rowLength % type.blockSize != 0 ? .f16 : type
    }

    /// Writes the file at `path` (which must not exist), fsynced when `durable`, hashed when `hashing`.
    func write(to path: String, durable: Bool, hashing: Bool) throws -> Written {
        let alpha = commonAlpha
        let tensors = try tensors(alpha: alpha)
        let metadata: [(key: String, value: GGUFValue)] = [
            ("general.architecture", .string(target.architecture)), ("general.type", .string("adapter")),
            ("adapter.type", .string("lora")), ("adapter.lora.alpha", .float32(alpha ?? 0)),
            ("general.quantization_version", .uint32(2)),
        ]
        let layout = GGUFHeaderEncoder.layout(metadata: metadata, tensors: tensors.map { ($0.name, $0.dims, $0.type) },
                                              alignment: GGUFAdapterSink.alignment)
        let out = try GGUFFileWriter(path: path, size: layout.fileSize, durable: durable, hashing: hashing)
        try out.append(layout.header)
        var types: [String: Int] = [:]
        for (t, offset) in zip(tensors, layout.offsets) {
            try out.pad(to: layout.header.count + Int(offset))
            let bytes = try t.values().withUnsafeBufferPointer { try GGMLQuantizer.quantize($0, type: t.type, tensor: t.name) }
            try out.append(bytes)
            types[t.type.name, default: 0] += 1
        }
        try out.pad(to: layout.fileSize)
        return Written(sha256: try out.finish(durable: durable), bytes: layout.fileSize, alpha: alpha ?? 0, folded: alpha == nil, types: types)
    }
}
