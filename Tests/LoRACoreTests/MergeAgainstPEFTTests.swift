import Foundation
import Testing
@testable import LoRACore
@testable import SafeTensors

private let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures").path

/// A fixture case made by scripts/make-fixtures.py with the real PEFT: base/, adapter(s), merged/
/// (PEFT's merge_and_unload, saved with save_pretrained) and case.json (adapters and weights).
struct FixtureCase: CustomStringConvertible, Sendable {
    let name: String
    var dir: String { "\(fixtures)/\(name)" }
    var description: String { name }

    var adapters: [(path: String, weight: Double)] {
        let json = try! JSONParser.parse(Array(FileManager.default.contents(atPath: dir + "/case.json")!))
        let names = json["adapters"]!.arrayValue!.map { $0.stringValue! }
        let weights = json["weights"]!.arrayValue!.map { $0.doubleValue! }
        return zip(names, weights).map { ("\(dir)/\($0)", $1) }
    }

    /// The scale for hand-written layouts, from case.json's "scale" or "alpha" + "rank".
    var scaleOverride: AdapterScaleOverride {
        let json = try! JSONParser.parse(Array(FileManager.default.contents(atPath: dir + "/case.json")!))
        return AdapterScaleOverride(alpha: json["alpha"]?.doubleValue, rank: json["rank"]?.intValue, scale: json["scale"]?.doubleValue)
    }

    private var caseJSON: JSONValue { try! JSONParser.parse(Array(FileManager.default.contents(atPath: dir + "/case.json")!)) }

    /// The model the adapters apply to: base/, or the model case.json names (`"base": "residual"`:
    /// the residual model a PiSSA/OLoRA adapter was trained on, merged with `residual_base`).
    var base: String { dir + "/" + (caseJSON["base"]?.stringValue ?? "base") }
    var residualBase: Bool { caseJSON["residual_base"]?.boolValue ?? false }

    func mergeOptions(output: String) -> MergeOptions {
        var o = MergeOptions(base: base, adapters: adapters, output: output)
        o.scaleOverride = scaleOverride
        o.residualBase = residualBase
        return o
    }

    func verifyOptions(merged: String) -> VerifyOptions {
        var o = VerifyOptions(base: base, adapters: adapters, merged: merged)
        o.scaleOverride = scaleOverride
        o.residualBase = residualBase
        return o
    }

    static let all = try! FileManager.default.contentsOfDirectory(atPath: fixtures).sorted().map(FixtureCase.init)
}

func temporaryDirectory() -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lora-tool-test-\(UUID().uuidString)").path
    try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

/// Distance in units in the last place between two stored values of the same float dtype.
func ulpDistance(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer, dtype: DType) -> Int {
    var worst = 0
    switch dtype {
    case .float32:
        for i in 0..<(a.count / 4) {
            let x = Int(Int32(bitPattern: a.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)))
            let y = Int(Int32(bitPattern: b.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)))
            worst = max(worst, abs(x - y))
        }
    case .float16, .bfloat16:
        for i in 0..<(a.count / 2) {
            let x = Int(Int16(bitPattern: a.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))
            let y = Int(Int16(bitPattern: b.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))
            worst = max(worst, abs(x - y))
        }
    default:
        worst = a.elementsEqual(b) ? 0 : Int.max
    }
    return worst
}

@Suite("Merge equals PEFT's merge_and_unload")
struct MergeAgainstPEFTTests {
    /// The fidelity bound README states ("What merge supports"), the same on every machine: 16-bit
    /// outputs within 1 ulp of PEFT's elementwise; f32 outputs within 4 ulp of the tensor's largest
    /// magnitude (max |W|, |W'|), normwise, since where the rank-r sum cancels against W an
    /// elementwise f32 ulp bound cannot hold for any summation order but PEFT's own.
    static func withinFidelityBound(ours: Checkpoint, peft: Checkpoint, base: any TensorStore, name: String, baseName: String) throws -> String? {
        let info = try #require(ours.info(name))
        if info.dtype != .float32 {
            let d = ulpDistance(try ours.bytes(of: name), try peft.bytes(of: name), dtype: info.dtype)
            return d <= 1 ? nil : "\(name) is \(d) ulp from PEFT (bound: 1)"
        }
        let w = try TensorData.floats(base, baseName), x = try TensorData.floats(ours, name), y = try TensorData.floats(peft, name)
        let largest = zip(w, y).reduce(Float(0)) { max($0, abs($1.0), abs($1.1)) }
        let worst = zip(x, y).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }
        return worst <= 4 * largest.ulp ? nil : "\(name): max |ours − PEFT| = \(worst) > 4 ulp(\(largest)) = \(4 * largest.ulp)"
    }

    @Test("Every tensor within the fidelity bound of PEFT (1 ulp bf16/f16, 4 ulp of the largest magnitude f32); untouched tensors byte-identical",
          arguments: FixtureCase.all)
    func matchesPEFT(fixture: FixtureCase) throws {
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        let report = try Merge.run(fixture.mergeOptions(output: out + "/merged"))
        #expect(report.mergedTensors > 0)
        let ours = try Checkpoint(path: out + "/merged")
        let peft = try Checkpoint(path: fixture.dir + "/merged")
        #expect(ours.names == peft.names)
        let adapters = try fixture.adapters.map { try Adapter(path: $0.path, scale: fixture.scaleOverride) }
        // The base as merge reads it: with its layers replicated when the adapter was trained so.
        let opened = TensorStream(model: try Checkpoint(path: fixture.base))
        let base = try LayerReplicationPass.forAdapters(adapters)?.apply(to: opened) ?? opened
        let plan = try MergePlan(base: base, adapters: adapters, weights: fixture.adapters.map(\.weight), targets: nil)
        for name in peft.names {
            let info = try #require(ours.info(name))
            #expect(info.dtype == peft.info(name)!.dtype)
            if let failure = try MergeAgainstPEFTTests.withinFidelityBound(ours: ours, peft: peft, base: base, name: name, baseName: plan.source(of: name)) {
                Issue.record("\(fixture.name): \(failure)")
            }
            if case .copy = plan.action(for: plan.source(of: name)) {
                #expect(try ours.bytes(of: name).elementsEqual(try base.bytes(of: plan.source(of: name))), "\(name) not copied byte for byte")
            }
        }
        // Side files come along.
        if FileManager.default.fileExists(atPath: fixture.base + "/config.json") {
            #expect(FileManager.default.fileExists(atPath: out + "/merged/config.json"))
        }
    }

    @Test("verify passes on PEFT's own merged output", arguments: FixtureCase.all)
    func verifyAcceptsPEFT(fixture: FixtureCase) throws {
        let options = fixture.verifyOptions(merged: fixture.dir + "/merged")
        let report = try Verify.run(options)
        #expect(report.passed, "\(report.failures.map { "\($0.tensor): \($0.detail ?? "")" })")
        #expect(report.entries.contains { $0.kind == .merged })
    }

    @Test("Merging with weight -1 un-merges an f32 merge to within 1 ulp of the base's scale")
    func unmerge() throws {
        let fixture = FixtureCase(name: "llama_f32")
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        _ = try Merge.run(MergeOptions(base: fixture.dir + "/base", adapters: fixture.adapters, output: out + "/m"))
        _ = try Merge.run(MergeOptions(base: out + "/m", adapters: fixture.adapters.map { ($0.path, -1) }, output: out + "/u"))
        let base = try Checkpoint(path: fixture.dir + "/base"), back = try Checkpoint(path: out + "/u")
        for name in base.names {
            let b = try TensorData.floats(base, name), u = try TensorData.floats(back, name)
            let merged = try TensorData.floats(try Checkpoint(path: out + "/m"), name)
            // (W + ΔW) − ΔW rounds twice in fp32: within the f32 fidelity bound, 4 ulp of the
            // tensor's largest magnitude (elementwise, one ulp of the larger of |W|, |W'| holds too).
            let largest = zip(b, merged).reduce(Float(0)) { max($0, abs($1.0), abs($1.1)) }
            for i in b.indices {
                #expect(abs(b[i] - u[i]) <= 4 * largest.ulp, "\(name)[\(i)]")
                #expect(abs(b[i] - u[i]) <= max(b[i].magnitude, merged[i].magnitude).ulp, "\(name)[\(i)]")
            }
        }
    }

    @Test("Sharded output is byte-identical across reruns and splits past --max-shard-size")
    func shardedDeterministic() throws {
        let fixture = FixtureCase(name: "llama_f16_sharded")
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        for run in ["a", "b"] {
            var o = MergeOptions(base: fixture.dir + "/base", adapters: fixture.adapters, output: "\(out)/\(run)")
            o.maxShardSize = 20_000
            o.dtype = .bf16
            _ = try Merge.run(o)
        }
        let files = try FileManager.default.contentsOfDirectory(atPath: out + "/a").sorted()
        #expect(files.contains("model.safetensors.index.json"))
        #expect(files.contains("model-00001-of-00003.safetensors") || files.contains("model-00001-of-00004.safetensors"))
        for f in files {
            #expect(FileManager.default.contents(atPath: "\(out)/a/\(f)") == FileManager.default.contents(atPath: "\(out)/b/\(f)"), "\(f)")
        }
        let config = String(decoding: FileManager.default.contents(atPath: out + "/a/config.json")!, as: UTF8.self)
        #expect(config.contains("\"bfloat16\""))
        let verify = try Verify.run(VerifyOptions(base: fixture.dir + "/base", adapters: fixture.adapters, merged: out + "/a"))
        #expect(verify.passed)
    }
}

@Suite("Merge refuses bad requests before writing anything")
struct MergeErrorTests {
    @Test("An output inside an input, or an existing output, is refused")
    func paths() throws {
        let fixture = FixtureCase(name: "llama_f32")
        #expect(throws: LoRACoreError.self) {
            try Merge.run(MergeOptions(base: fixture.dir + "/base", adapters: fixture.adapters, output: fixture.dir + "/base/out"))
        }
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        _ = FileManager.default.createFile(atPath: out + "/keep", contents: Data("x".utf8))
        #expect(throws: SafeTensorsError.self) {
            try Merge.run(MergeOptions(base: fixture.dir + "/base", adapters: fixture.adapters, output: out))
        }
        #expect(FileManager.default.contents(atPath: out + "/keep") == Data("x".utf8))
    }

    @Test("An adapter whose base is another model fails naming the module, and leaves no output")
    func wrongBase() throws {
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        let gpt2 = FixtureCase(name: "gpt2_conv1d")
        let llama = FixtureCase(name: "llama_f32")
        do {
            _ = try Merge.run(MergeOptions(base: gpt2.dir + "/base", adapters: llama.adapters, output: out + "/m"))
            Issue.record("merged a Llama adapter into GPT-2")
        } catch let e as LoRACoreError {
            #expect(e.localizedDescription.contains("model.layers.0"))
        }
        #expect(!FileManager.default.fileExists(atPath: out + "/m"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: out).isEmpty)
    }
}
