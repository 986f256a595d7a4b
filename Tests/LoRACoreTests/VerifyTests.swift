import Foundation
import LoRAKernels
import Testing
@testable import LoRACore
@testable import SafeTensors

/// Merges `fixture` with lora-tool into `dir/merged` and returns that path.
private func merged(_ fixture: FixtureCase, in dir: String, base: String? = nil, dtype: OutputDType = .keep) throws -> String {
    var o = fixture.mergeOptions(output: dir + "/merged")
    if let base { o.base = base }
    o.dtype = dtype
    _ = try Merge.run(o)
    return dir + "/merged"
}

private func verify(_ fixture: FixtureCase, merged: String, base: String? = nil, mode: VerifyMode = .both, seed: UInt64 = 0) throws -> VerifyReport {
    var o = fixture.verifyOptions(merged: merged)
    if let base { o.base = base }
    o.mode = mode
    o.seed = seed
    return try Verify.run(o)
}

/// Rewrites element `index` of `tensor` in the safetensors file(s) of `dir` through `change`,
/// which gets and returns the stored bit pattern (16 or 32 bits).
func rewrite(_ dir: String, tensor: String, index: Int, _ change: (UInt32) -> UInt32) throws {
    let ckpt = try Checkpoint(path: dir)
    let loc = try #require(ckpt.location(of: tensor))
    let size = ckpt.info(tensor)!.dtype == .float32 ? 4 : 2
    var data = try Data(contentsOf: URL(fileURLWithPath: loc.file.path))
    let at = loc.offset + index * size
    var bits: UInt32 = 0
    for k in 0..<size { bits |= UInt32(data[at + k]) << (8 * k) }
    bits = change(bits)
    for k in 0..<size { data[at + k] = UInt8((bits >> (8 * k)) & 0xff) }
    try data.write(to: URL(fileURLWithPath: loc.file.path))
}

/// The first merged q_proj of a Llama fixture.
private let tensor = "model.layers.0.self_attn.q_proj.weight"

@Suite("verify: exact mode, probes, side files")
struct VerifyTests {
    @Test("verify passes on lora-tool's own merge of every fixture, every element checked", arguments: FixtureCase.all)
    func acceptsOwnMerges(fixture: FixtureCase) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let report = try verify(fixture, merged: try merged(fixture, in: dir))
        #expect(report.passed, "\(report.failures.map { "\($0.tensor): \($0.detail ?? "")" }) \(report.fileFailures.map { "\($0.file): \($0.detail ?? "")" })")
        #expect(report.entries.allSatisfy { $0.exact != nil })
        #expect(report.entries.contains { $0.kind == .merged && $0.probes != nil })
    }

    @Test("A bf16 element moved by 2 ulp fails, at the first, a middle and the last element; 1 ulp passes", arguments: ["first", "middle", "last"])
    func bf16TwoUlp(position: String) throws {
        let fixture = FixtureCase(name: "llama_bf16_rslora_patterns")
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = try merged(fixture, in: dir)
        let n = try Checkpoint(path: out).info(tensor)!.elementCount!
        let index = position == "first" ? 0 : (position == "last" ? n - 1 : n / 2 + 3)
        try rewrite(out, tensor: tensor, index: index) { $0 + 1 }
        #expect(try verify(fixture, merged: out).passed, "1 ulp is within the bf16 bound")
        try rewrite(out, tensor: tensor, index: index) { $0 + 1 }
        let report = try verify(fixture, merged: out)
        #expect(!report.passed)
        let failure = try #require(report.failures.first)
        #expect(failure.tensor == tensor && report.failures.count == 1)
        let worst = try #require(failure.exact?.worst)
        #expect(worst.index == index && worst.ulps == 2 && failure.exact?.overBound == 1)
        #expect(worst.row == index / 32 && worst.column == index % 32)
        #expect(failure.detail!.contains("element \(index) (row \(index / 32), col \(index % 32))") && failure.detail!.contains("2 ulp"))
    }

    @Test("An f32 element moved by 5 ulp of the tensor's largest magnitude fails (first, middle, last); 4 ulp passes", arguments: ["first", "middle", "last"])
    func f32OverBound(position: String) throws {
        let fixture = FixtureCase(name: "llama_f32")
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = try merged(fixture, in: dir)
        let w = try TensorData.floats(try Checkpoint(path: fixture.dir + "/base"), tensor), w1 = try TensorData.floats(try Checkpoint(path: out), tensor)
        let m = max(w.map(abs).max()!, w1.map(abs).max()!)
        let index = position == "first" ? 0 : (position == "last" ? w.count - 1 : w.count / 2 + 3)
        let original = w1[index]
        try rewrite(out, tensor: tensor, index: index) { _ in (original + 4 * m.ulp).bitPattern }
        #expect(try verify(fixture, merged: out).passed, "4 ulp of the largest magnitude is within the f32 bound")
        try rewrite(out, tensor: tensor, index: index) { _ in (original + 5 * m.ulp).bitPattern }
        let report = try verify(fixture, merged: out)
        let failure = try #require(report.failures.first)
        #expect(failure.tensor == tensor && failure.exact?.worst?.index == index && failure.exact?.worst?.ulps == 5)
        #expect(failure.exact?.normwise == true && failure.exact?.overBound == 1)
        // The probe check alone cannot see a change this small.
        #expect(try verify(fixture, merged: out, mode: .probes).passed)
    }

    @Test("A 100% change orthogonal to the 8 probes of seed 0 passes the old probe-only check and fails exact verify and other seeds")
    func probeOrthogonal() throws {
        let fixture = FixtureCase(name: "llama_f32")
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = try merged(fixture, in: dir)
        let ckpt = try Checkpoint(path: out)
        let shape = ckpt.info(tensor)!.shape
        let (rows, cols) = (shape[0], shape[1])
        var w = try TensorData.floats(ckpt, tensor).map(Double.init)
        // The probes MergeChecker draws for this tensor from seed 0: probe p is the p-th run of `cols` values.
        var gen = ProbeGenerator(seed: 0, name: tensor)
        let probes = (0..<8).map { _ in (0..<cols).map { _ in gen.next() } }
        func dot(_ a: [Double], _ b: [Double]) -> Double { zip(a, b).reduce(0) { $0 + $1.0 * $1.1 } }
        func orthogonalized(_ v: [Double], _ basis: [[Double]]) -> [Double] {
            var v = v
            for _ in 0..<2 { for q in basis { let d = dot(v, q); v = zip(v, q).map { $0 - d * $1 } } }
            return v
        }
        var basis: [[Double]] = []
        for p in probes {
            let v = orthogonalized(p, basis)
            let n = dot(v, v).squareRoot()
            basis.append(v.map { $0 / n })
        }
        var random = SplitMix64(seed: 7)
        var delta: [Double] = []
        for _ in 0..<rows { delta += orthogonalized((0..<cols).map { _ in Double(random.next() >> 11) * 0x1p-52 - 1 }, basis) }
        let scale = (dot(w, w) / dot(delta, delta)).squareRoot()  // ‖δ‖ = ‖W'‖
        for i in w.indices { w[i] += scale * delta[i] }
        for i in w.indices { try rewrite(out, tensor: tensor, index: i) { _ in Float(w[i]).bitPattern } }

        #expect(try verify(fixture, merged: out, mode: .probes, seed: 0).passed, "the probe-only check of seed 0 (verify before exact mode) passes it")
        let other = try verify(fixture, merged: out, mode: .probes, seed: 1)
        #expect(other.failures.map(\.tensor) == [tensor])
        let report = try verify(fixture, merged: out, seed: 0)
        #expect(report.failures.map(\.tensor) == [tensor])
        #expect(report.failures.first?.exact?.overBound ?? 0 > rows * cols / 2)
    }

    @Test("Side files and metadata: an edited config.json, a changed tokenizer, a removed or an extra side file, changed metadata each fail")
    func sideFiles() throws {
        let fixture = FixtureCase(name: "llama_f32")
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let base = dir + "/base"
        try FileManager.default.copyItem(atPath: fixture.dir + "/base", toPath: base)
        try Data("{\"model\": {\"type\": \"BPE\"}}\n".utf8).write(to: URL(fileURLWithPath: base + "/tokenizer.json"))
        let good = try merged(fixture, in: dir, base: base)
        #expect(try verify(fixture, merged: good, base: base).passed)

        func corrupted(_ name: String, _ change: (String) throws -> Void) throws -> VerifyReport {
            let d = dir + "/" + name
            try FileManager.default.copyItem(atPath: good, toPath: d)
            try change(d)
            return try verify(fixture, merged: d, base: base)
        }
        func replace(_ path: String, _ from: String, _ to: String) throws {
            let text = try String(contentsOfFile: path, encoding: .utf8)
            #expect(text.contains(from))
            try text.replacingOccurrences(of: from, with: to).write(toFile: path, atomically: false, encoding: .utf8)
        }
        func replaceBytes(_ path: String, _ from: String, _ to: String) throws {
            var data = try Data(contentsOf: URL(fileURLWithPath: path))
            let range = try #require(data.range(of: Data(from.utf8)))
            data.replaceSubrange(range, with: Data(to.utf8))
            try data.write(to: URL(fileURLWithPath: path))
        }
        let cases: [(String, String, (String) throws -> Void)] = [
            ("config", "config.json", { try replace($0 + "/config.json", "\"vocab_size\"", "\"rope_theta\": 20000.0,\n  \"vocab_size\"") }),
            ("tokenizer", "tokenizer.json", { try replace($0 + "/tokenizer.json", "BPE", "WordPiece") }),
            ("removed", "generation_config.json", { try FileManager.default.removeItem(atPath: $0 + "/generation_config.json") }),
            ("extra", "notes.txt", { try Data("x".utf8).write(to: URL(fileURLWithPath: $0 + "/notes.txt")) }),
            // Same length: the header's offsets stay valid.
            ("metadata", "model.safetensors __metadata__", { try replaceBytes($0 + "/model.safetensors", "\"format\":\"pt\"", "\"format\":\"np\"") }),
        ]
        for (name, file, change) in cases {
            let report = try corrupted(name, change)
            #expect(!report.passed && report.failures.isEmpty, "\(name)")
            #expect(report.fileFailures.map(\.file) == [file], "\(name): \(report.fileFailures.map { "\($0.file): \($0.detail ?? "")" })")
        }
    }

    @Test("config.json may name the --dtype of the merge in dtype/torch_dtype, and no other dtype")
    func configDType() throws {
        let fixture = FixtureCase(name: "llama_f32")
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = try merged(fixture, in: dir, dtype: .bf16)
        let report = try verify(fixture, merged: out)
        #expect(report.passed, "\(report.fileFailures.map { $0.detail ?? "" })")
        let config = try #require(report.files.first { $0.file == "config.json" })
        #expect(config.passed && config.expectedChanges == ["dtype"])
        // dtype naming another dtype than the merged tensors' is a failure.
        let path = out + "/config.json"
        let text = try String(contentsOfFile: path, encoding: .utf8)
        try text.replacingOccurrences(of: "\"bfloat16\"", with: "\"float16\"").write(toFile: path, atomically: false, encoding: .utf8)
        let bad = try verify(fixture, merged: out)
        #expect(bad.fileFailures.map(\.file) == ["config.json"])
        #expect(bad.fileFailures.first?.detail?.contains("'dtype' is \"float16\"") == true)
    }

    @Test("The probe check fed exact mode's blocks gives the probe-only check's errors", arguments: ["llama_f32", "gpt2_conv1d", "llama_dora", "llama_bf16_rslora_patterns"])
    func streamedProbes(name: String) throws {
        let fixture = FixtureCase(name: name)
        let streamed = try verify(fixture, merged: fixture.dir + "/merged", seed: 5)
        let alone = try verify(fixture, merged: fixture.dir + "/merged", mode: .probes, seed: 5)
        let byName = Dictionary(uniqueKeysWithValues: alone.entries.map { ($0.tensor, $0) })
        let merged = streamed.entries.filter { $0.kind == .merged }
        #expect(!merged.isEmpty)
        for e in merged {
            let a = try #require(e.probes), b = try #require(byName[e.tensor]?.probes)
            #expect(abs(a.relativeError - b.relativeError) <= 1e-9 * max(a.relativeError, 1e-30) + 1e-300, "\(e.tensor)")
            #expect(a.tolerance == b.tolerance)
        }
    }

    @Test("Without --seed the probe seed is drawn afresh and reported")
    func randomSeed() throws {
        let fixture = FixtureCase(name: "llama_f32")
        let options = VerifyOptions(base: fixture.dir + "/base", adapters: fixture.adapters, merged: fixture.dir + "/merged")
        let a = try Verify.run(options), b = try Verify.run(options)
        #expect(a.passed && b.passed)
        #expect(a.seed != b.seed)
    }
}
