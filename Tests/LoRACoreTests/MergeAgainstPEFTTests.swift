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

    func mergeOptions(output: String) -> MergeOptions {
        var o = MergeOptions(base: dir + "/base", adapters: adapters, output: output)
        o.scaleOverride = scaleOverride
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
    @Test("Every tensor within 1 ulp (bf16/f16) or 2 ulp (f32) of PEFT; untouched tensors byte-identical", arguments: FixtureCase.all)
    func matchesPEFT(fixture: FixtureCase) throws {
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        let report = try Merge.run(fixture.mergeOptions(output: out + "/merged"))
        #expect(report.mergedTensors > 0)
        let ours = try Checkpoint(path: out + "/merged")
        let peft = try Checkpoint(path: fixture.dir + "/merged")
        let base = try Checkpoint(path: fixture.dir + "/base")
        #expect(ours.names == peft.names)
        let plan = try MergePlan(base: base, adapters: fixture.adapters.map { try Adapter(path: $0.path, scale: fixture.scaleOverride) },
                                 weights: fixture.adapters.map(\.weight), targets: nil)
        for name in peft.names {
            let info = try #require(ours.info(name))
            #expect(info.dtype == peft.info(name)!.dtype)
            let d = ulpDistance(try ours.bytes(of: name), try peft.bytes(of: name), dtype: info.dtype)
            if d > (info.dtype == .float32 ? 2 : 1) {
                // PEFT merges 3×3 convolution LoRA through conv2d, and the hand-written fixtures' oracle
                // is torch's own (A·B)ᵀ·α: summation orders GEMM cannot reproduce; where W and ΔW
                // cancel, a 1-ulp difference in ΔW is many ulp of the small result. Judge those
                // elements on the scale of the terms: 2 ulp of |W| + |ΔW|.
                #expect(info.dtype == .float32 && (fixture.name.hasPrefix("conv") || fixture.name.hasPrefix("handwritten")),
                        "\(fixture.name): \(name) is \(d) ulp from PEFT")
                let w = try TensorData.floats(base, plan.source(of: name)), x = try TensorData.floats(ours, name), y = try TensorData.floats(peft, name)
                for i in w.indices {
                    let bound = 2 * (abs(w[i]) + abs(y[i] - w[i])).ulp
                    #expect(abs(x[i] - y[i]) <= bound, "\(fixture.name): \(name)[\(i)] \(x[i]) vs PEFT \(y[i])")
                }
            }
            if case .copy = plan.action(for: plan.source(of: name)) {
                #expect(try ours.bytes(of: name).elementsEqual(try base.bytes(of: plan.source(of: name))), "\(name) not copied byte for byte")
            }
        }
        // Side files come along.
        if FileManager.default.fileExists(atPath: fixture.dir + "/base/config.json") {
            #expect(FileManager.default.fileExists(atPath: out + "/merged/config.json"))
        }
    }

    @Test("verify passes on PEFT's own merged output", arguments: FixtureCase.all)
    func verifyAcceptsPEFT(fixture: FixtureCase) throws {
        var options = VerifyOptions(base: fixture.dir + "/base", adapters: fixture.adapters, merged: fixture.dir + "/merged")
        options.scaleOverride = fixture.scaleOverride
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
            for i in b.indices {
                // (W + ΔW) − ΔW rounds twice in fp32: the error is at most one ulp of the larger magnitude.
                let bound = max(b[i].magnitude, merged[i].magnitude).ulp
                #expect(abs(b[i] - u[i]) <= bound, "\(name)[\(i)]")
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
