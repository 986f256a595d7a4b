import Foundation
import LoRAGraph
import Testing
@testable import LoRACore
@testable import SafeTensors

/// Fixtures made by scripts/make-fixtures.py (`residual-init`) with PEFT's PiSSA and OLoRA: base/
/// (original), residual/ (what PEFT trains on), initial/ (factors at initialisation), adapter/
/// (trained, relative to residual/), converted/ (PEFT's conversion), merged/ (PEFT: adapter/ into
/// residual/), merged-original/ (PEFT: converted/ into base/). The generic suites (merge against
/// PEFT, verify, determinism) cover adapter/ into residual/ through case.json.
private let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures").path

@Suite("PiSSA / OLoRA: adapters trained on a residual model")
struct ResidualInitialisationTests {
    static let cases = ["llama_pissa", "llama_olora_bf16_rslora"]

    @Test("convert --initial writes PEFT's converted factors exactly ([A; A₀], [B, −B₀]; r and α doubled), and its merge into the original base equals PEFT's merge of PEFT's conversion within the bound",
          arguments: cases)
    func conversionMatchesPEFT(name: String) throws {
        let d = fixtures + "/" + name
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var c = ConvertOptions(adapter: d + "/adapter", to: .peft, output: dir + "/converted")
        c.initial = d + "/initial"
        let report = try Convert.run(c)
        #expect(report.notes.contains { $0.contains("A' = [A; A₀]") })
        let ours = try Adapter(path: dir + "/converted"), peft = try Adapter(path: d + "/converted"), trained = try Adapter(path: d + "/adapter")
        #expect(ours.config.residualInitialisation == nil && ours.config.initLoraWeights == nil)
        for m in peft.modules {
            let o = try #require(ours.modules.first { $0.module == m.module })
            #expect(o.rank == m.rank && o.rank == 2 * trained.modules.first { $0.module == m.module }!.rank)
            #expect(abs(o.scale - m.scale) <= 1e-15 * m.scale, "\(m.module): scale \(o.scale) vs PEFT's \(m.scale)")
            #expect(try TensorData.floats(ours.checkpoint, o.aName) == TensorData.floats(peft.checkpoint, m.aName), "\(m.module) A")
            #expect(try TensorData.floats(ours.checkpoint, o.bName) == TensorData.floats(peft.checkpoint, m.bName), "\(m.module) B")
        }
        var o = MergeOptions(base: d + "/base", adapters: [(dir + "/converted", 1)], output: dir + "/merged")
        o.durable = false
        o.verify = true
        _ = try Merge.run(o)
        let merged = try Checkpoint(path: dir + "/merged"), reference = try Checkpoint(path: d + "/merged-original"), base = try Checkpoint(path: d + "/base")
        let dropped = Set(Self.droppedModules(d))
        for tensor in reference.names where !dropped.contains(TensorName(tensor).module) {
            if let failure = try MergeAgainstPEFTTests.withinFidelityBound(ours: merged, peft: reference, base: base, name: tensor, baseName: tensor) {
                Issue.record("\(name): \(failure)")
            }
        }
    }

    @Test("PEFT's conversion drops embedding LoRA (its `\"lora_A\" in name` test misses lora_embedding_A): lora-tool keeps it, so its merge into the original base equals PEFT's own merge into the residual model; PEFT's converted merge leaves the embedding unchanged, and verify says so")
    func embeddingKept() throws {
        let d = fixtures + "/llama_pissa"
        #expect(Self.droppedModules(d) == ["model.embed_tokens"])
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var c = ConvertOptions(adapter: d + "/adapter", to: .peft, output: dir + "/converted")
        c.initial = d + "/initial"
        _ = try Convert.run(c)
        var o = MergeOptions(base: d + "/base", adapters: [(dir + "/converted", 1)], output: dir + "/merged")
        o.durable = false
        _ = try Merge.run(o)
        let ours = try Checkpoint(path: dir + "/merged"), residualRoute = try Checkpoint(path: d + "/merged")
        let peftConverted = try Checkpoint(path: d + "/merged-original"), base = try Checkpoint(path: d + "/base")
        let embedding = "model.embed_tokens.weight"
        // The independent computation: PEFT merging the trained adapter into the model it was trained on.
        #expect(try MergeAgainstPEFTTests.withinFidelityBound(ours: ours, peft: residualRoute, base: base, name: embedding, baseName: embedding) == nil)
        #expect(try !ours.bytes(of: embedding).elementsEqual(base.bytes(of: embedding)))
        #expect(try peftConverted.bytes(of: embedding).elementsEqual(base.bytes(of: embedding)), "PEFT's converted adapter lost the embedding update")
        // Every other tensor: the two routes agree within the f32 bound too.
        for tensor in residualRoute.names {
            #expect(try MergeAgainstPEFTTests.withinFidelityBound(ours: ours, peft: residualRoute, base: base, name: tensor, baseName: tensor) == nil, "\(tensor)")
        }
        let report = try Verify.run(VerifyOptions(base: d + "/base", adapters: [(dir + "/converted", 1)], merged: d + "/merged-original"))
        #expect(!report.passed && report.failures.map(\.tensor) == [embedding])
    }

    @Test("Refused by name: the original base without --residual-base, --residual-base with a plain adapter, with two adapters or weight ≠ 1; convert, resize and combine without --initial; --initial on a plain adapter, on LoftQ, and from another adapter")
    func refusals() throws {
        let d = fixtures + "/llama_pissa"
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func message(_ body: () throws -> Void) -> String {
            do { try body() } catch { return error.localizedDescription }
            return ""
        }
        func merge(_ adapters: [(String, Double)], base: String = d + "/base", residual: Bool = false) -> String {
            message {
                var o = MergeOptions(base: base, adapters: adapters, output: dir + "/m")
                o.durable = false
                o.residualBase = residual
                _ = try Merge.run(o)
            }
        }
        let plain = fixtures + "/llama_f32/adapter"
        let refused = merge([(d + "/adapter", 1)])
        #expect(refused.contains("init_lora_weights 'pissa'") && refused.contains("--residual-base") && refused.contains("--initial"))
        #expect(merge([(plain, 1)], base: fixtures + "/llama_f32/base", residual: true).contains("--residual-base applies to an adapter initialised by PiSSA"))
        #expect(merge([(d + "/adapter", 1), (d + "/converted", 1)], base: d + "/residual", residual: true).contains("takes one adapter"))
        #expect(merge([(d + "/adapter", 0.5)], base: d + "/residual", residual: true).contains("weight 1"))
        let verifyRefused = message {
            _ = try Verify.run(VerifyOptions(base: d + "/base", adapters: [(d + "/adapter", 1)], merged: d + "/merged"))
        }
        #expect(verifyRefused.contains("--residual-base"))
        #expect(message { _ = try Convert.run(ConvertOptions(adapter: d + "/adapter", to: .peft, output: dir + "/c")) }.contains("--initial"))
        #expect(message { _ = try Resize.run(ResizeOptions(adapter: d + "/adapter", output: dir + "/r", rule: .fixed(2))) }.contains("init_lora_weights 'pissa'"))
        var c = ConvertOptions(adapter: plain, to: .peft, output: dir + "/c")
        c.initial = d + "/initial"
        #expect(message { _ = try Convert.run(c) }.contains("already is a LoRA of its base"))
        // LoftQ's residual is a quantized model: no LoRA of the original reproduces it.
        let loftq = try Self.copy(d + "/adapter", to: dir + "/loftq") { $0.replacingOccurrences(of: "\"init_lora_weights\": \"pissa\"", with: "\"init_lora_weights\": \"loftq\"") }
        c = ConvertOptions(adapter: loftq, to: .peft, output: dir + "/c")
        c.initial = d + "/initial"
        #expect(message { _ = try Convert.run(c) }.contains("LoftQ's residual is quantized"))
        // Initial factors of another adapter (the OLoRA fixture's: other modules and shapes).
        c = ConvertOptions(adapter: d + "/adapter", to: .peft, output: dir + "/c")
        c.initial = fixtures + "/llama_olora_bf16_rslora/initial"
        #expect(message { _ = try Convert.run(c) }.contains("not the same adapter"))
        #expect(!FileManager.default.fileExists(atPath: dir + "/m") && !FileManager.default.fileExists(atPath: dir + "/c") && !FileManager.default.fileExists(atPath: dir + "/r"))
    }

    @Test("inspect names the initialisation, and PEFT's converted adapter has none", arguments: cases)
    func inspectNamesIt(name: String) throws {
        let d = fixtures + "/" + name
        let r = try #require(try Inspect.run(path: d + "/adapter").adapter?.residualInitialisation)
        #expect(r.method == (name.contains("pissa") ? .pissa : .olora) && r.value == (name.contains("pissa") ? "pissa" : "olora"))
        #expect(try Inspect.run(path: d + "/converted").adapter?.residualInitialisation == nil)
    }

    /// Modules whose tensors PEFT's conversion left out (case.json `peft_conversion_dropped`).
    static func droppedModules(_ dir: String) -> [String] {
        let json = try! JSONParser.parse(Array(FileManager.default.contents(atPath: dir + "/case.json")!))
        return Array(Set(json["peft_conversion_dropped"]!.arrayValue!.map { TensorName(String($0.stringValue!.dropFirst("base_model.model.".count))).module })).sorted()
    }

    /// A copy of adapter directory `from` with its adapter_config.json text changed by `edit`.
    static func copy(_ from: String, to: String, edit: (String) -> String) throws -> String {
        try FileManager.default.copyItem(atPath: from, toPath: to)
        let config = to + "/adapter_config.json"
        let text = try String(contentsOfFile: config, encoding: .utf8)
        let changed = edit(text)
        #expect(changed != text)
        try changed.write(toFile: config, atomically: true, encoding: .utf8)
        return to
    }
}
