import Foundation
import GGUF
import Testing
@testable import LoRACore
@testable import SafeTensors

private let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("GGUFMergeFixtures").path

/// A base of the GGUF merge fixtures and its adapter.
struct GGUFCase: Sendable, CustomStringConvertible {
    var base: String
    var type: GGUFOutputType
    var basePath: String { "\(fixtures)/\(base)" }
    var adapter: String { "\(fixtures)/\(base.split(separator: "/")[0])/adapter" }
    var description: String { "\(base) → \(type.rawValue)" }
}

/// Merges `c` into `dir/out.gguf` (adapter weight `weight`) and returns the output's path.
private func merge(_ c: GGUFCase, in dir: String, weight: Double = 1, verify: Bool = false) throws -> (path: String, report: MergeReport) {
    var options = MergeOptions(base: c.basePath, adapters: [(c.adapter, weight)], output: dir + "/out.gguf")
    options.ggufType = c.type
    options.durable = false
    options.verify = verify
    options.seed = 7
    return (dir + "/out.gguf", try Merge.run(options))
}

private func verify(_ c: GGUFCase, merged: String, mode: VerifyMode = .both) throws -> VerifyReport {
    var o = VerifyOptions(base: c.basePath, adapters: [(c.adapter, 1)], merged: merged)
    o.mode = mode
    o.seed = 7
    o.threads = 2
    return try Verify.run(o)
}

/// The failures of `report` as "tensor: detail" lines, for messages.
private func describe(_ report: VerifyReport) -> String {
    (report.failures.map { "\($0.tensor): \($0.detail ?? "")" } + report.fileFailures.map { "\($0.file): \($0.detail ?? "")" }).joined(separator: "\n")
}

/// Flips `mask` into the byte at `offset` of tensor `tensor`'s data in the GGUF file at `path`
/// (its data offset read with the GGUF reader).
private func flip(_ path: String, tensor: String, offset: Int, mask: UInt8 = 0x01) throws {
    let file = try GGUFFile(path: path)
    let info = try #require(file.info(tensor))
    var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
    bytes[file.header.dataStart + Int(info.offset) + offset] ^= mask
    try bytes.write(to: URL(fileURLWithPath: path))
}

/// Rewrites the GGUF file at `path` with the metadata and the (name, dims, type, bytes) list of
/// tensors its edits make of its own.
private func rewrite(_ path: String, metadata editMetadata: (inout [(key: String, value: GGUFValue)]) -> Void = { _ in },
                     tensors edit: (inout [(name: String, dims: [UInt64], type: GGMLType, bytes: [UInt8])]) throws -> Void = { _ in }) throws {
    let file = try GGUFFile(path: path)
    var metadata = file.header.metadata
    editMetadata(&metadata)
    var tensors = file.header.tensors.map { (name: $0.name, dims: $0.dims, type: $0.type, bytes: [UInt8](file.bytes(of: $0))) }
    try edit(&tensors)
    let (header, offsets, size) = GGUFHeaderEncoder.layout(metadata: metadata, tensors: tensors.map { ($0.name, $0.dims, $0.type) },
                                                           alignment: file.header.alignment)
    var bytes = header + [UInt8](repeating: 0, count: size - header.count)
    for (i, t) in tensors.enumerated() {
        let at = header.count + Int(offsets[i])
        bytes.replaceSubrange(at..<(at + t.bytes.count), with: t.bytes)
    }
    try Data(bytes).write(to: URL(fileURLWithPath: path))
}

/// `source` (a PEFT LoRA fixture) copied to `dir/adapter` with `modules_to_save: [module]` and a
/// saved `module.weight` of `shape` (values 0.05·sin(i)): a replacement of that base tensor.
func adapterSaving(_ module: String, shape: [Int], from source: String, in dir: String) throws -> String {
    let adapter = dir + "/adapter"
    try FileManager.default.createDirectory(atPath: adapter, withIntermediateDirectories: true)
    let config = try String(contentsOfFile: source + "/adapter_config.json", encoding: .utf8)
    try config.replacingOccurrences(of: #""modules_to_save": null"#, with: #""modules_to_save": ["\#(module.split(separator: ".").last!)"]"#)
        .write(toFile: adapter + "/adapter_config.json", atomically: true, encoding: .utf8)
    let ckpt = try Checkpoint(path: source + "/adapter_model.safetensors")
    let saved = TensorInfo(name: "base_model.model.\(module).weight", dtype: .float32, shape: shape)
    let w = try SafeTensorsWriter(path: adapter + "/adapter_model.safetensors", tensors: ckpt.names.map { ckpt.info($0)! } + [saved])
    while let t = w.nextTensor {
        let values = t.name == saved.name ? (0..<shape.reduce(1, *)).map { Float(sin(Double($0))) * 0.05 } : try TensorData.floats(ckpt, t.name)
        try TensorData.encode(values, format: .f32).withUnsafeBytes { try w.write(t.name, bytes: $0) }
    }
    try w.finish()
    return adapter
}

/// A merged tensor of each fixture (GGUF names).
private let mergedTensor = "blk.1.attn_q.weight"
private let untouchedTensor = "token_embd.weight"

@Suite("verify on GGUF merges: exact (dequantized both sides, codes for block types), probes for float outputs")
struct GGUFVerifyTests {
    static let cases: [GGUFCase] = [
        GGUFCase(base: "tiny/base-q8_0.gguf", type: .keep), GGUFCase(base: "tiny/base-q8_0.gguf", type: .f16),
        GGUFCase(base: "tiny/base-q8_0.gguf", type: .f32), GGUFCase(base: "tiny/base-q8_0.gguf", type: .bf16),
        GGUFCase(base: "tiny/base-q8_0.gguf", type: .q8_0), GGUFCase(base: "tiny/base-f16.gguf", type: .keep),
        GGUFCase(base: "kquant/base-q4_k.gguf", type: .keep), GGUFCase(base: "kquant/base-q4_k.gguf", type: .q4_k),
        GGUFCase(base: "kquant/base-q4_k.gguf", type: .q8_0), GGUFCase(base: "gemma/base-f16.gguf", type: .keep),
        GGUFCase(base: "gemma2/base-f16.gguf", type: .keep), GGUFCase(base: "gemma3/base-f16.gguf", type: .q8_0),
        GGUFCase(base: "phi3/base-f16.gguf", type: .keep), GGUFCase(base: "phi3/base-f16.gguf", type: .q8_0),
    ]

    @Test("merge then verify passes, every tensor checked exactly; float outputs also on probes", arguments: cases)
    func accepts(c: GGUFCase) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = try merge(c, in: dir).path
        let report = try verify(c, merged: out)
        #expect(report.passed, "\(describe(report))")
        #expect(report.entries.allSatisfy { $0.exact != nil })
        let merged = report.entries.filter { $0.kind == .merged }
        // One merged tensor per adapter module: 2 layers × 7 (tiny), phi3's 4 fused ones, else 7.
        #expect(merged.count == (c.base.hasPrefix("tiny") ? 14 : c.base.hasPrefix("phi3") ? 4 : 7))
        let floatOutput = [.f16, .f32, .bf16].contains(c.type) || (c.type == .keep && c.base.hasSuffix("f16.gguf"))
        #expect(merged.allSatisfy { ($0.probes != nil) == floatOutput })
        #expect((report.probesSkipped == nil) == floatOutput)
        #expect(report.files.map(\.file) == ["out.gguf metadata"] && report.files.allSatisfy(\.passed))
    }

    @Test("merge --verify checks the GGUF output before it gets its name")
    func mergeVerify() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for c in [GGUFCase(base: "kquant/base-q4_k.gguf", type: .keep), GGUFCase(base: "tiny/base-q8_0.gguf", type: .f16)] {
            let (out, report) = try merge(c, in: dir, verify: true)
            let v = try #require(report.verification)
            #expect(v.passed && v.seed == 7 && v.entries.count == (c.base.hasPrefix("tiny") ? 21 : 12))
            try FileManager.default.removeItem(atPath: out)
        }
    }

    @Test("A changed code or scale of one block fails naming the tensor, its GGUF row and block; nothing else fails",
          arguments: [("tiny/base-q8_0.gguf", 34 + 2 + 5, "GGUF row 0, block 1"), ("tiny/base-q8_0.gguf", 34 * 3, "GGUF row 1, block 1"),
                      ("kquant/base-q4_k.gguf", 144 + 16 + 7, "GGUF row 1, block 0"), ("kquant/base-q4_k.gguf", 144 * 5, "GGUF row 5, block 0")])
    func alteredBlock(base: String, offset: Int, position: String) throws {
        let c = GGUFCase(base: base, type: .keep)
        let tensor = base.hasPrefix("tiny") ? mergedTensor : "blk.0.attn_q.weight"
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = try merge(c, in: dir).path
        // Q8_0 blocks: 34 bytes (f16 scale, 32 codes), rows of 64 = 2 blocks; Q4_K: 144 bytes (d, dmin,
        // 12 scale bytes, 128 code bytes), rows of 256 = 1 block (the first offsets are codes, the second a scale).
        try flip(out, tensor: tensor, offset: offset, mask: 0x10)
        let report = try verify(c, merged: out)
        #expect(!report.passed)
        #expect(report.failures.map(\.tensor) == [tensor], "\(describe(report))")
        let detail = try #require(report.failures.first?.detail)
        #expect(detail.contains(position) && detail.contains("requantization") && detail.contains("1 block differs"), "\(detail)")
    }

    @Test("A changed byte of an untouched tensor fails naming it")
    func alteredUntouched() throws {
        let c = GGUFCase(base: "tiny/base-q8_0.gguf", type: .keep)
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = try merge(c, in: dir).path
        try flip(out, tensor: untouchedTensor, offset: 100)
        let report = try verify(c, merged: out)
        #expect(report.failures.map(\.tensor) == [untouchedTensor])
        #expect(report.failures[0].kind == .copied && report.failures[0].detail!.contains("byte 100") && report.failures[0].detail!.contains("base's"))
    }

    @Test("A tensor missing, an extra tensor, a merged tensor in another type (its values right), or an untouched one retyped fails naming it",
          arguments: ["missing", "extra", "retyped", "retyped-untouched"])
    func alteredList(change: String) throws {
        let c = GGUFCase(base: "tiny/base-q8_0.gguf", type: .keep)
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = try merge(c, in: dir).path
        var name = mergedTensor
        try rewrite(out, tensors: { tensors in
            switch change {
            case "missing":
                tensors.removeAll { $0.name == mergedTensor }
            case "extra":
                name = "blk.2.attn_q.weight"
                tensors.append((name, [64, 64], .f32, [UInt8](repeating: 0, count: 64 * 64 * 4)))
            default:
                // The same values, re-encoded as F16: a valid tensor, but not what this merge writes.
                if change == "retyped-untouched" { name = untouchedTensor }
                let i = tensors.firstIndex { $0.name == name }!
                let values = try tensors[i].bytes.withUnsafeBytes { try GGMLDequantizer.dequantize($0, type: tensors[i].type) }
                tensors[i].bytes = try values.withUnsafeBufferPointer { try GGMLQuantizer.quantize($0, type: .f16) }
                tensors[i].type = .f16
            }
        })
        let report = try verify(c, merged: out)
        #expect(report.failures.map(\.tensor) == [name], "\(describe(report))")
        let failure = report.failures[0]
        switch change {
        case "missing": #expect(failure.kind == .missing && failure.detail == "missing from the merged GGUF file")
        case "extra": #expect(failure.kind == .extra && failure.detail == "in the merged GGUF file but not in the base")
        case "retyped": #expect(failure.kind == .merged && failure.detail!.contains("type F16, but merge writes Q8_0 here"))
        default: #expect(failure.kind == .copied && failure.detail!.contains("type F16, but the base's is Q8_0"))
        }
    }

    @Test("A replacement (modules_to_save lm_head) is checked as the requantization of the adapter's value: passes, and a changed block fails naming it")
    func replacement() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // The tiny adapter plus a saved lm_head (GGUF output.weight, Q8_0 in the base).
        let adapter = try adapterSaving("lm_head", shape: [96, 64], from: "\(fixtures)/tiny/adapter", in: dir)
        var options = MergeOptions(base: "\(fixtures)/tiny/base-q8_0.gguf", adapters: [(adapter, 1)], output: dir + "/out.gguf")
        options.durable = false
        _ = try Merge.run(options)
        var v = VerifyOptions(base: options.base, adapters: [(adapter, 1)], merged: options.output)
        v.seed = 1
        let report = try Verify.run(v)
        #expect(report.passed, "\(describe(report))")
        #expect(report.entries.first { $0.tensor == "output.weight" }?.kind == .replaced)
        try flip(options.output, tensor: "output.weight", offset: 34 * 2 + 9)
        let failed = try Verify.run(v)
        #expect(failed.failures.map(\.tensor) == ["output.weight"])
        #expect(failed.failures[0].detail!.contains("GGUF row 1, block 0 is not the Q8_0 requantization of the adapter's replacement value"))
    }

    @Test("A changed metadata value fails naming the key, tensors in another order fail the header; the tensors themselves still pass")
    func alteredMetadata() throws {
        let c = GGUFCase(base: "tiny/base-q8_0.gguf", type: .keep)
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = try merge(c, in: dir).path
        try rewrite(out, metadata: { metadata in
            let k = metadata.firstIndex { $0.key == "llama.context_length" }!
            metadata[k].value = .uint32(12345)
        })
        let report = try verify(c, merged: out)
        #expect(report.failures.isEmpty && report.fileFailures.count == 1)
        #expect(report.fileFailures[0].file == "out.gguf metadata" && report.fileFailures[0].detail!.contains("'llama.context_length'"))
        // The tensors in another order (each one right): the header differs from what merge writes.
        let second = try merge(c, in: temporaryDirectory()).path
        defer { try? FileManager.default.removeItem(atPath: (second as NSString).deletingLastPathComponent) }
        try rewrite(second, tensors: { $0.swapAt(2, 3) })
        let swapped = try verify(c, merged: second)
        #expect(swapped.failures.isEmpty && swapped.fileFailures.count == 1)
        #expect(swapped.fileFailures[0].detail!.contains("merge writes the base's tensor order"))
    }

    @Test("A merge at the wrong scale fails on every merged tensor, each named", arguments: [GGUFOutputType.keep, .f16, .f32])
    func wrongScale(type: GGUFOutputType) throws {
        let c = GGUFCase(base: "tiny/base-q8_0.gguf", type: type)
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = try merge(c, in: dir, weight: 0.5).path
        let report = try verify(c, merged: out)
        #expect(report.failures.count == 14)
        #expect(report.failures.allSatisfy { $0.kind == .merged && $0.tensor.hasPrefix("blk.") })
        if type != .keep {
            // The probes see it too, independently of merge's code.
            #expect(report.failures.allSatisfy { $0.probes.map { $0.relativeError > $0.tolerance } ?? false })
            let probesOnly = try verify(c, merged: out, mode: .probes)
            #expect(probesOnly.failures.count == 14 && probesOnly.failures.allSatisfy { $0.exact == nil })
        }
    }

    @Test("An F16 element moved by 2 ulp fails (1 ulp passes), naming the tensor and element")
    func f16Ulps() throws {
        let c = GGUFCase(base: "tiny/base-q8_0.gguf", type: .f16)
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = try merge(c, in: dir).path
        // Element 70 = GGUF row 1, col 6; a positive step of the low bit, twice.
        let stored = try GGUFFile(path: out)
        let bits = try stored.bytes(of: mergedTensor).loadUnaligned(fromByteOffset: 140, as: UInt16.self)
        #expect(bits & 0x7FFF != 0 && bits & 0x7FFF < 0x7BFF)
        let data = try Data(contentsOf: URL(fileURLWithPath: out))
        func write(_ k: UInt16) throws {
            var d = data
            let at = stored.header.dataStart + Int(stored.info(mergedTensor)!.offset) + 140
            d[at] = UInt8((bits + k) & 0xFF)
            d[at + 1] = UInt8((bits + k) >> 8)
            try d.write(to: URL(fileURLWithPath: out))
        }
        try write(1)
        #expect(try verify(c, merged: out, mode: .exact).passed)
        try write(2)
        let report = try verify(c, merged: out, mode: .exact)
        #expect(report.failures.map(\.tensor) == [mergedTensor])
        #expect(report.failures[0].detail!.hasPrefix("GGUF row 1, col 6: ") && report.failures[0].detail!.contains("2 ulp from merge's value (F16 allows 1)"))
    }

    @Test("--mode probes is refused on merged tensors in block types, naming the tensor and why; --mode both checks them exactly")
    func probesRefused() throws {
        let c = GGUFCase(base: "kquant/base-q4_k.gguf", type: .keep)
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = try merge(c, in: dir).path
        do {
            _ = try verify(c, merged: out, mode: .probes)
            Issue.record("expected a refusal")
        } catch let LoRACoreError.invalidRequest(message) {
            #expect(message.contains("--mode probes cannot check") && message.contains("quantization error") && message.contains("--mode exact"))
            #expect(message.contains("tensor 'blk.0."))
        }
        let both = try verify(c, merged: out)
        #expect(both.passed && both.probesSkipped?.contains("7 merged tensors in block types (Q4_K, Q6_K)") == true)
    }

    @Test("A GGUF base with a safetensors merged model is refused; a GGUF merged file with a safetensors base is checked as an export, so a base that is no transformers model is refused naming its config.json")
    func mixedFormats() throws {
        let c = GGUFCase(base: "tiny/base-q8_0.gguf", type: .keep)
        #expect(throws: LoRACoreError.self) { try verify(c, merged: "\(fixtures)/tiny/adapter") }
        var o = VerifyOptions(base: "\(fixtures)/tiny/adapter", adapters: [(c.adapter, 1)], merged: c.basePath)
        o.seed = 1
        #expect(throws: LoRACoreError.invalidConfig(file: "\(fixtures)/tiny/adapter/config.json", detail: "missing or not an object: a GGUF model's metadata comes from it")) {
            try Verify.run(o)
        }
    }
}
