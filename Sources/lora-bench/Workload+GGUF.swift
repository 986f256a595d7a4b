import Foundation
import GGUF
import LoRAKernels
import SafeTensors

/// The GGUF base of the benchmark (`base-q8_0.gguf`): base/ as llama.cpp's
/// `convert_hf_to_gguf.py --outtype q8_0` lays it out, written without torch or the converter:
///
/// - GGUF v3, alignment 32 (the default: no `general.alignment` key, as the converter writes it);
/// - the converter's metadata for a llama model, in its order, minus the tokenizer (lora-tool
///   needs none): architecture, type, name, block count, context length, embedding and feed-forward
///   lengths, head counts, rope base, rms epsilon, key/value lengths, file type (MOSTLY_Q8_0),
///   vocabulary size, rope dimensions, quantization version;
/// - tensors in the converter's order (base/'s safetensors order: sorted names, shard after shard),
///   named by `GGUFTensorNameMap`, dimensions reversed (innermost first);
/// - q_proj / k_proj rows permuted as `LlamaModel.permute` does (`GGUFRowPermutation`, hidden/64
///   heads each);
/// - 2-D weights Q8_0 by `GGMLQuantizer` (embeddings and lm_head too, as the converter's q8_0;
///   F16 where rows are not whole Q8_0 blocks, the converter's fallback), norms F32.
///
/// Each tensor is read, decoded and quantized in groups of whole heads (~64 Ki values) and written
/// as it goes: memory stays flat whatever the tensor size.
extension Workload {
    /// Writes `base-q8_0.gguf` under `dir` from `base/` (skipped when already there; written to
    /// `base-q8_0.gguf.partial` and renamed, so an interrupted run is redone).
    func generateGGUFBase(in dir: String) throws {
        let target = dir + "/base-q8_0.gguf", partial = target + ".partial"
        if FileManager.default.fileExists(atPath: target) { return }
        try? FileManager.default.removeItem(atPath: partial)
        let dense = try Checkpoint(path: dir + "/base")
        let names = try GGUFTensorNameMap(architecture: "llama", file: target)
        let heads = hidden / 64
        var tensors: [(name: String, hf: String, dims: [UInt64], type: GGMLType)] = []
        for hf in dense.names {
            let t = dense.info(hf)!
            guard let name = names.ggufName(of: hf) else { throw CocoaError(.fileReadCorruptFile, userInfo: ["tensor": hf]) }
            // The converter's q8_0 falls back to F16 for rows that are not whole 32-value blocks (the
            // small workload's down_proj, 688 values).
            let type: GGMLType = t.shape.count < 2 ? .f32 : t.shape[1] % GGMLType.q8_0.blockSize == 0 ? .q8_0 : .f16
            tensors.append((name, hf, t.shape.reversed().map(UInt64.init), type))
        }
        let metadata: [(key: String, value: GGUFValue)] = [
            ("general.architecture", .string("llama")),
            ("general.type", .string("model")),
            ("general.name", .string("Bench \(name)")),
            ("llama.block_count", .uint32(UInt32(layers))),
            ("llama.context_length", .uint32(2048)),
            ("llama.embedding_length", .uint32(UInt32(hidden))),
            ("llama.feed_forward_length", .uint32(UInt32(intermediate))),
            ("llama.attention.head_count", .uint32(UInt32(heads))),
            ("llama.attention.head_count_kv", .uint32(UInt32(heads))),
            ("llama.rope.freq_base", .float32(10000)),
            ("llama.attention.layer_norm_rms_epsilon", .float32(1e-5)),
            ("llama.attention.key_length", .uint32(UInt32(hidden / heads))),
            ("llama.attention.value_length", .uint32(UInt32(hidden / heads))),
            ("general.file_type", .uint32(7)),  // LLAMA_FTYPE_MOSTLY_Q8_0
            ("llama.vocab_size", .uint32(UInt32(vocab))),
            ("llama.rope.dimension_count", .uint32(UInt32(hidden / heads))),
            ("general.quantization_version", .uint32(2)),
        ]
        let alignment = 32
        let (header, offsets, fileSize) = GGUFHeaderEncoder.layout(
            metadata: metadata, tensors: tensors.map { ($0.name, $0.dims, $0.type) }, alignment: alignment)
        guard FileManager.default.createFile(atPath: partial, contents: nil), let out = FileHandle(forWritingAtPath: partial) else {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: partial])
        }
        var position = 0
        func write(_ bytes: [UInt8]) throws {
            try out.write(contentsOf: bytes)
            position += bytes.count
        }
        func pad(to offset: Int) throws {
            if offset > position { try write([UInt8](repeating: 0, count: offset - position)) }
        }
        try write(header)
        for (i, t) in tensors.enumerated() {
            try pad(to: header.count + Int(offsets[i]))
            let raw = try dense.bytes(of: t.hf)
            let cols = Int(t.dims[0]), rows = t.dims.count == 2 ? Int(t.dims[1]) : 1
            let permutation: GGUFRowPermutation? = switch names.ropeRole(of: t.name) {
            case .query?, .key?: GGUFRowPermutation(heads: heads, rows: rows)
            case nil: nil
            }
            // Whole heads per group, so a permuted row never leaves its group.
            var groupRows = max(1, (1 << 16) / cols)
            if let p = permutation { groupRows = (groupRows + p.headRows - 1) / p.headRows * p.headRows }
            var values = [Float](repeating: 0, count: groupRows * cols)
            var r0 = 0
            while r0 < rows {
                let n = min(groupRows, rows - r0)
                values.withUnsafeMutableBufferPointer { v in
                    for g in r0..<(r0 + n) {
                        let src = permutation?.transformersRow(ofGGUFRow: g) ?? g
                        FloatCodec.decode(UnsafeRawBufferPointer(rebasing: raw[(src * cols * 2)..<((src + 1) * cols * 2)]), format: .bf16,
                                          into: UnsafeMutableBufferPointer(rebasing: v[((g - r0) * cols)..<((g - r0 + 1) * cols)]))
                    }
                }
                let bytes = try values.withUnsafeBufferPointer {
                    try GGMLQuantizer.quantize(UnsafeBufferPointer(rebasing: $0[0..<(n * cols)]), type: t.type, tensor: t.name)
                }
                try write(bytes)
                r0 += n
            }
            dense.release(t.hf)
            try pad(to: GGUFHeaderEncoder.padded(position, alignment))
        }
        precondition(position == fileSize, "the layout and the writes agree")
        try out.synchronize()
        try out.close()
        try FileManager.default.moveItem(atPath: partial, toPath: target)
    }
}
