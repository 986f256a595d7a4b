import Foundation
import Testing
@testable import LoRACore
@testable import LoRAKernels
@testable import SafeTensors

private let combineFixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("CombineFixtures").path

/// A case of scripts/make-fixtures.py's `combine` group: PEFT 0.21.2's add_weighted_adapter on the
/// inputs, its merge (`peft/<name>.merged.safetensors`: the touched tensors), for cat its combined
/// adapter (`peft/<name>.adapter`), and an independent float64 torch reference (Σ wᵢ·ΔWᵢ per module
/// as `<module>.delta`, its truncated SVD as `<module>.svd<R>`, Σ wᵢ·sᵢ·bᵢ as `<module>.bias`).
struct CombineCase: CustomStringConvertible, Sendable {
    let name: String
    let method: CombineMethod
    let adapters: [String]
    let weights: [Double]
    let density: Double?
    let majoritySign: CombineOptions.MajoritySign
    let rank: Int?
    let referenceRank: Int
    let reference: String
    let baseDir: String
    var description: String { name }

    static let all: [CombineCase] = {
        let json = try! JSONParser.parse(Array(FileManager.default.contents(atPath: combineFixtures + "/cases.json")!))
        return json.arrayValue!.map { c in
            CombineCase(name: c["name"]!.stringValue!, method: CombineMethod(rawValue: c["method"]!.stringValue!)!,
                        adapters: c["adapters"]!.arrayValue!.map { $0.stringValue! }, weights: c["weights"]!.arrayValue!.map { $0.doubleValue! },
                        density: c["density"]?.doubleValue, majoritySign: c["majority_sign"].flatMap { $0.stringValue.flatMap(CombineOptions.MajoritySign.init) } ?? .total,
                        rank: c["rank"]?.intValue, referenceRank: c["reference_rank"]!.intValue!, reference: c["reference"]!.stringValue!,
                        baseDir: c["base"]!.stringValue!)
        }
    }()

    static func named(_ name: String) -> CombineCase { all.first { $0.name == name }! }

    /// The cases where PEFT is right, compared with PEFT's own merge.
    static var peftIsRight: [CombineCase] { all.filter { !$0.name.hasSuffix("rslora_first") && !["cat_bias", "cat_bf16_base"].contains($0.name) } }

    func options(output: String) -> CombineOptions {
        var o = CombineOptions(adapters: zip(adapters, weights).map { ("\(combineFixtures)/\($0)", $1) }, method: method, output: output)
        o.density = density
        o.majoritySign = majoritySign
        o.rule = rank.map { .fixed($0) }
        return o
    }

    var base: String { "\(combineFixtures)/\(baseDir)" }
    var peftMerged: String { "\(combineFixtures)/peft/\(name).merged.safetensors" }
    var peftAdapter: String { "\(combineFixtures)/peft/\(name).adapter" }
    var referenceFile: String { "\(combineFixtures)/\(reference)" }
}

/// A float64 tensor of a reference file.
private func doubles(_ ckpt: Checkpoint, _ name: String) throws -> [Double] {
    let info = try #require(ckpt.info(name))
    #expect(info.dtype == .float64)
    let bytes = try ckpt.bytes(of: name)
    return (0..<(bytes.count / 8)).map { Double(bitPattern: UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 8 * $0, as: UInt64.self))) }
}

/// s·B·A of a written PEFT module in float64 (out×in).
private func delta(_ adapter: Adapter, _ m: AdapterModule) throws -> [Double] {
    let f = try LoRAFactors(m, adapter: adapter, weight: 1)
    var d = [Double](repeating: 0, count: m.outFeatures * m.inFeatures)
    for o in 0..<m.outFeatures {
        for k in 0..<m.rank {
            let b = Double(f.b[o * m.rank + k]) * m.scale
            for i in 0..<m.inFeatures { d[o * m.inFeatures + i] += b * Double(f.a[k * m.inFeatures + i]) }
        }
    }
    return d
}

private func relative(_ x: [Double], _ y: [Double]) -> Double {
    let diff = zip(x, y).reduce(0) { $0 + ($1.0 - $1.1) * ($1.0 - $1.1) }
    let norm = y.reduce(0) { $0 + $1 * $1 }
    return (diff / norm).squareRoot()
}

@Suite("combine against PEFT's add_weighted_adapter and float64 references")
struct CombineTests {
    @Test("lora-tool's combined adapter, merged by lora-tool, equals PEFT's merge of PEFT's combined adapter (f32: 4 ulp of the largest magnitude; SVD methods: 1e-4 relative, PEFT's f32 SVD being no oracle)",
          arguments: CombineCase.peftIsRight)
    func mergeMatchesPEFT(c: CombineCase) throws {
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        _ = try Combine.run(c.options(output: out + "/combined"))
        _ = try Merge.run(MergeOptions(base: c.base, adapters: [(out + "/combined", 1)], output: out + "/merged"))
        let ours = try Checkpoint(path: out + "/merged"), peft = try Checkpoint(path: c.peftMerged), base = try Checkpoint(path: c.base)
        #expect(!peft.names.isEmpty)
        for name in peft.names {
            if !c.method.truncates {
                if let failure = try MergeAgainstPEFTTests.withinFidelityBound(ours: ours, peft: peft, base: base, name: name, baseName: name) {
                    Issue.record("\(c.name): \(failure)")
                }
                continue
            }
            guard name.hasSuffix(".weight") else {  // biases: no input has lora_B.bias here
                #expect(try ours.bytes(of: name).elementsEqual(try base.bytes(of: name)), "\(name)")
                continue
            }
            let w = try TensorData.floats(base, name).map(Double.init)
            let mine = zip(try TensorData.floats(ours, name), w).map { Double($0) - $1 }
            let theirs = zip(try TensorData.floats(peft, name), w).map { Double($0) - $1 }
            let error = relative(mine, theirs)
            #expect(error <= 1e-4, "\(c.name) \(name): ΔW \(error) from PEFT's")
        }
    }

    @Test("On a bf16 base, lora-tool's cat merges to within 1 bf16 ulp of W + Σ wᵢ·ΔWᵢ (float64); PEFT's cat factors are bf16 and miss it")
    func bf16Base() throws {
        let c = CombineCase.named("cat_bf16_base")
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        _ = try Combine.run(c.options(output: out + "/combined"))
        _ = try Merge.run(MergeOptions(base: c.base, adapters: [(out + "/combined", 1)], output: out + "/merged"))
        let ours = try Checkpoint(path: out + "/merged"), peft = try Checkpoint(path: c.peftMerged), base = try Checkpoint(path: c.base)
        let reference = try Checkpoint(path: c.referenceFile)
        var peftWorst = 0.0
        for name in peft.names where name.hasSuffix("proj.weight") {
            #expect(ours.info(name)?.dtype == .bfloat16)
            let exact = zip(try TensorData.floats(base, name), try doubles(reference, String(name.dropLast(".weight".count)) + ".delta")).map { Double($0) + $1 }
            let mine = try TensorData.floats(ours, name), theirs = try TensorData.floats(peft, name)
            for (i, x) in exact.enumerated() {
                let ulp = Double(Float(x).ulp) * 65536  // bf16 keeps 7 of float's 23 fraction bits
                #expect(abs(Double(mine[i]) - x) <= ulp, "\(name)[\(i)]")
                peftWorst = max(peftWorst, abs(Double(theirs[i]) - x) / ulp)
            }
        }
        #expect(peftWorst > 1, "PEFT's bf16 cat factors were expected to miss by more than 1 ulp somewhere (worst \(peftWorst))")
    }

    @Test("cat writes PEFT's tensors (its leading rows and columns; PEFT zero-pads to Σ max ranks)",
          arguments: CombineCase.all.filter { $0.method == .cat && $0.baseDir == "base" })
    func catTensorsMatchPEFT(c: CombineCase) throws {
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        _ = try Combine.run(c.options(output: out + "/combined"))
        let ours = try Adapter(path: out + "/combined"), peft = try Adapter(path: c.peftAdapter)
        #expect(ours.modules.map(\.module) == peft.modules.map(\.module))
        for (m, p) in zip(ours.modules, peft.modules) {
            let a = try TensorData.floats(ours.checkpoint, m.aName), b = try TensorData.floats(ours.checkpoint, m.bName)
            let pa = try TensorData.floats(peft.checkpoint, p.aName), pb = try TensorData.floats(peft.checkpoint, p.bName)
            #expect(m.scale == 1)
            #expect(Array(pa.prefix(a.count)) == a, "\(c.name) \(m.module) A")
            #expect(pa.dropFirst(a.count).allSatisfy { $0 == 0 })
            for o in 0..<m.outFeatures {
                #expect(Array(pb[(o * p.rank)..<(o * p.rank + m.rank)]) == Array(b[(o * m.rank)..<((o + 1) * m.rank)]), "\(c.name) \(m.module) B row \(o)")
            }
        }
    }

    @Test("cat is Σ wᵢ·ΔWᵢ and svd the float64 truncated SVD of it, to 1e-5 relative (float64 torch reference)",
          arguments: CombineCase.all.filter { $0.method == .cat || $0.method == .svd })
    func exactAgainstFloat64(c: CombineCase) throws {
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        let report = try Combine.run(c.options(output: out + "/combined"))
        let ours = try Adapter(path: out + "/combined"), reference = try Checkpoint(path: c.referenceFile)
        #expect(!ours.config.useRslora)
        for m in ours.modules {
            let want = try doubles(reference, m.module + (c.method == .cat ? ".delta" : ".svd\(c.referenceRank)"))
            let error = relative(try delta(ours, m), want)
            #expect(error <= (c.method == .cat ? 1e-6 : 1e-5), "\(c.name) \(m.module): relative error \(error)")
            if c.method == .svd {
                let r = try #require(report.modules.first { $0.module == m.module })
                // The reported error is the truncation's, relative to the exact Σ wᵢ·ΔWᵢ.
                let truncation = relative(want, try doubles(reference, m.module + ".delta"))
                #expect(abs(r.relativeError - truncation) <= 1e-6 + 1e-5 * truncation, "\(m.module): reported \(r.relativeError), reference \(truncation)")
            }
        }
    }

    @Test("rsLoRA first: PEFT's result is √(new rank) too large, lora-tool's is Σ wᵢ·ΔWᵢ",
          arguments: [("cat_rslora_first", 12.0), ("svd_rslora_first", 6.0)])
    func rsLoRAFirst(name: String, newRank: Double) throws {
        let c = CombineCase.named(name)
        let peft = try Checkpoint(path: c.peftMerged), base = try Checkpoint(path: c.base), reference = try Checkpoint(path: c.referenceFile)
        let suffix = c.method == .cat ? ".delta" : ".svd\(c.referenceRank)"
        // PEFT: ‖W_merged − W‖ / ‖reference‖ ≈ √(new rank) on every module (bf16 rounding aside).
        for name in peft.names where name.hasSuffix("proj.weight") {
            let module = String(name.dropLast(".weight".count))
            let w = try TensorData.floats(base, name), merged = try TensorData.floats(peft, name)
            let peftDelta = zip(merged, w).map { Double($0) - Double($1) }
            let want = try doubles(reference, module + suffix)
            let ratio = (peftDelta.reduce(0) { $0 + $1 * $1 } / want.reduce(0) { $0 + $1 * $1 }).squareRoot()
            #expect(abs(ratio - newRank.squareRoot()) < 0.02 * newRank.squareRoot(), "\(module): PEFT's delta is \(ratio)× the reference")
        }
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        _ = try Combine.run(c.options(output: out + "/combined"))
        let ours = try Adapter(path: out + "/combined")
        for m in ours.modules {
            #expect(relative(try delta(ours, m), try doubles(reference, m.module + suffix)) <= 1e-5, "\(m.module)")
        }
    }

    @Test("lora_bias: lora-tool writes Σ wᵢ·sᵢ·bᵢ (float64 reference); PEFT drops it")
    func loraBias() throws {
        let c = CombineCase.named("cat_bias")
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        let report = try Combine.run(c.options(output: out + "/combined"))
        #expect(report.notes.contains { $0.contains("Σ wᵢ·sᵢ·bᵢ") })
        let ours = try Adapter(path: out + "/combined"), reference = try Checkpoint(path: c.referenceFile)
        #expect(ours.config.loraBias)
        var checked = 0
        for m in ours.modules {
            guard let biasName = m.bBiasName else {
                #expect(reference.info(m.module + ".bias") == nil)
                continue
            }
            let bias = try TensorData.floats(ours.checkpoint, biasName).map(Double.init)
            #expect(relative(bias, try doubles(reference, m.module + ".bias")) <= 1e-6, "\(m.module)")
            #expect(relative(try delta(ours, m), try doubles(reference, m.module + ".delta")) <= 1e-6, "\(m.module)")
            checked += 1
        }
        #expect(checked == 2)  // q_proj and v_proj of the one layer
        // PEFT's merge left the base biases as they were.
        let peft = try Checkpoint(path: c.peftMerged), base = try Checkpoint(path: c.base)
        for name in peft.names where name.hasSuffix("q_proj.bias") || name.hasSuffix("v_proj.bias") {
            #expect(try peft.bytes(of: name).elementsEqual(try base.bytes(of: name)), "\(name): PEFT changed the bias")
        }
        // lora-tool's merge adds it.
        _ = try Merge.run(MergeOptions(base: c.base, adapters: [(out + "/combined", 1)], output: out + "/merged"))
        let merged = try Checkpoint(path: out + "/merged")
        let name = "model.layers.0.self_attn.q_proj.bias"
        let b = try TensorData.floats(base, name).map(Double.init), change = try doubles(reference, "model.layers.0.self_attn.q_proj.bias")
        let got = try TensorData.floats(merged, name).map(Double.init)
        for i in b.indices {
            // Two fp32 roundings (the stored change, then the sum): within 4 ulp of the largest magnitude involved.
            let largest = Float(max(abs(b[i]), abs(change[i]), abs(b[i] + change[i])))
            #expect(abs(got[i] - (b[i] + change[i])) <= 4 * Double(largest.ulp), "merged bias[\(i)]")
        }
    }
}

@Suite("combine: TIES, DARE and magnitude pruning by their definitions")
struct CombinePruningTests {
    @Test("DARE keeps each entry with probability density, divides the kept ones by density, and is reproducible from the seed")
    func dareDefinition() {
        let n = 200_000, density = 0.3
        let x = (0..<n).map { Float($0 % 97) - 48.5 }
        let mask = DropMask(seed: 5, module: "m", input: 0, tensor: "A")
        let pruned = TaskArithmetic.randomPrune(x, density: density, mask: mask)
        let kept = zip(x, pruned).filter { $0.1 != 0 }
        #expect(abs(Double(kept.count) / Double(n) - density) < 0.005)
        #expect(kept.allSatisfy { $0.1 == $0.0 / Float(density) })
        #expect(pruned == TaskArithmetic.randomPrune(x, density: density, mask: DropMask(seed: 5, module: "m", input: 0, tensor: "A")))
        #expect(pruned != TaskArithmetic.randomPrune(x, density: density, mask: DropMask(seed: 6, module: "m", input: 0, tensor: "A")))
        #expect(pruned != TaskArithmetic.randomPrune(x, density: density, mask: DropMask(seed: 5, module: "m", input: 1, tensor: "A")))
        #expect(TaskArithmetic.randomPrune(x, density: 1, mask: mask) == x)
    }

    @Test("The documented generator: SplitMix64 seeded with seed ⊕ FNV-1a-64(module/input/tensor), kept when (next >> 11)·2⁻⁵³ < density",
          arguments: [(UInt64(0), "model.layers.0.self_attn.q_proj", 0, "A", "011100111010000000010101011001000010001010111010"),
                      (UInt64(7), "model.layers.0.self_attn.q_proj", 2, "delta", "001011101100000011111110000111101110100001101001")])
    func documentedGenerator(seed: UInt64, module: String, input: Int, tensor: String, bits: String) {
        // Expected bits computed by an independent Python implementation of the documented rule.
        var m = DropMask(seed: seed, module: module, input: input, tensor: tensor)
        #expect(String(bits.map { _ in m.keeps(0.5) ? "1" : "0" }) == bits)
    }

    @Test("Magnitude pruning keeps the Int(density·n) largest magnitudes")
    func magnitude() {
        #expect(TaskArithmetic.magnitudePrune([0.1, -3, 2, -0.5, 1], density: 0.6) == [0, -3, 2, 0, 1])
        #expect(TaskArithmetic.magnitudePrune([1, 2, 3], density: 0.5) == [0, 0, 3])
        #expect(TaskArithmetic.magnitudePrune([1, 2], density: 1) == [1, 2])
    }

    @Test("TIES elects the sign on the pruned, unweighted tensors, then averages the weighted agreeing entries")
    func tiesElection() {
        let t: [[Float]] = [[1, -2, 0.5], [-3, 1, 0.5], [1, 1, -4]]
        let w: [Float] = [1, 10, 1]
        // total: Σ = (-1, 0, -3) → signs (−, +, −); frequency: Σ sign = (1, 1, 1) → all +.
        let total = TaskArithmetic.combine(t, weights: w, rule: .ties, density: 1, majoritySign: .total) { _ in DropMask(seed: 0, module: "", input: 0, tensor: "") }
        #expect(total == [Float(-30), 5.5, -4])
        let frequency = TaskArithmetic.combine(t, weights: w, rule: .ties, density: 1, majoritySign: .frequency) { _ in DropMask(seed: 0, module: "", input: 0, tensor: "") }
        #expect(frequency == [Float(1), 5.5, 2.75])
    }

    @Test("dare_ties and dare_linear write the same bytes for the same seed and other bytes for another", arguments: ["dare_ties", "dare_linear_svd"])
    func dareDeterministic(method: String) throws {
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        let inputs = ["a1", "e2", "e3"].map { ("\(combineFixtures)/\($0)", 0.5) }
        for (dir, seed) in [("x", UInt64(3)), ("y", 3), ("z", 4)] {
            var o = CombineOptions(adapters: inputs, method: CombineMethod(rawValue: method)!, output: "\(out)/\(dir)")
            o.density = 0.4
            o.seed = seed
            let r = try Combine.run(o)
            #expect(r.seed == seed)
        }
        let bytes = { (d: String) in FileManager.default.contents(atPath: "\(out)/\(d)/adapter_model.safetensors") }
        #expect(bytes("x") == bytes("y"))
        #expect(bytes("x") != bytes("z"))
    }
}

@Suite("combine refuses what cannot be combined")
struct CombineRefusalTests {
    /// A copy of the llama_dora fixture's adapter with every tensor named `matching` multiplied by `factor`.
    static func scaledDoRA(into dir: String, matching: String, factor: Float) throws -> String {
        let source = URL(fileURLWithPath: combineFixtures).deletingLastPathComponent().path + "/Fixtures/llama_dora/adapter"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: source + "/adapter_config.json", toPath: dir + "/adapter_config.json")
        let ckpt = try Checkpoint(path: source + "/adapter_model.safetensors")
        let w = try SafeTensorsWriter(path: dir + "/adapter_model.safetensors", tensors: ckpt.names.map { ckpt.info($0)! })
        while let t = w.nextTensor {
            var values = try TensorData.floats(ckpt, t.name)
            if t.name.contains(matching) { values = values.map { $0 * factor } }
            try TensorData.encode(values, format: TensorData.format(t.dtype)!).withUnsafeBytes { try w.write(t.name, bytes: $0) }
        }
        try w.finish()
        return dir
    }

    @Test("DoRA inputs sharing one magnitude vector combine: the result merges as the single adapter with the summed weight")
    func doraSharedMagnitude() throws {
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        let fixtures = URL(fileURLWithPath: combineFixtures).deletingLastPathComponent().path + "/Fixtures/llama_dora"
        // Same magnitudes, B halved: 1·ΔW + 1·(ΔW/2) = 1.5·ΔW, rescaled by the shared m.
        let half = try Self.scaledDoRA(into: out + "/half", matching: "lora_B", factor: 0.5)
        let report = try Combine.run(CombineOptions(adapters: [(fixtures + "/adapter", 1), (half, 1)], method: .cat, output: out + "/combined"))
        #expect(report.notes.contains { $0.contains("magnitude") })
        _ = try Merge.run(MergeOptions(base: fixtures + "/base", adapters: [(out + "/combined", 1)], output: out + "/merged-combined"))
        _ = try Merge.run(MergeOptions(base: fixtures + "/base", adapters: [(fixtures + "/adapter", 1.5)], output: out + "/merged-single"))
        let got = try Checkpoint(path: out + "/merged-combined"), want = try Checkpoint(path: out + "/merged-single")
        #expect(got.names == want.names)
        for name in want.names {
            let g = try TensorData.floats(got, name), e = try TensorData.floats(want, name)
            let largest = e.map(abs).max() ?? 0
            let worst = zip(g, e).map { abs($0 - $1) }.max() ?? 0
            #expect(worst <= 4 * largest.ulp, "\(name): \(worst) over 4 ulp of \(largest)")
        }
    }

    @Test("DoRA inputs with different magnitude vectors are refused with the reason, whatever the weights", arguments: [0.5, 1.0])
    func doraDifferentMagnitudes(weight: Double) throws {
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        let fixtures = URL(fileURLWithPath: combineFixtures).deletingLastPathComponent().path + "/Fixtures/llama_dora"
        let other = try Self.scaledDoRA(into: out + "/other", matching: "lora_magnitude_vector", factor: 1.01)
        do {
            _ = try Combine.run(CombineOptions(adapters: [(fixtures + "/adapter", 1), (other, weight)], method: .cat, output: out + "/o"))
            Issue.record("combined DoRA adapters with different magnitudes")
        } catch let e as LoRACoreError {
            #expect(e.localizedDescription.contains("magnitude vector differs"))
            #expect(e.localizedDescription.contains("does not add"))
        }
        #expect(!FileManager.default.fileExists(atPath: out + "/o"))
    }

    @Test("Factor-wise methods need equal ranks; the message says which to use instead")
    func unequalRanks() throws {
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        let c = CombineCase.named("cat")
        var o = c.options(output: out + "/o")
        o.method = .linear
        #expect { try Combine.run(o) } throws: { ($0 as? LoRACoreError)?.localizedDescription.contains("use cat or svd") == true }
    }

    @Test("Options that do not go with the method are refused", arguments: [
        (CombineMethod.ties, nil as Double?, nil as ExtractSVDOptions.RankRule?),
        (.cat, 0.5, nil), (.linear, nil, .fixed(2)), (.svd, nil, .fixed(0)), (.dareTies, 1.5, nil),
    ])
    func badOptions(method: CombineMethod, density: Double?, rule: ExtractSVDOptions.RankRule?) {
        var o = CombineCase.named("linear").options(output: "/tmp/never-written")
        o.method = method
        o.density = density
        o.rule = rule
        #expect(throws: LoRACoreError.self) { try Combine.run(o) }
    }

    @Test("A single input is combined as linear, as PEFT does, and reproduces it")
    func single() throws {
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        let r = try Combine.run(CombineOptions(adapters: [("\(combineFixtures)/a2", -0.5)], method: .svd, output: out + "/o"))
        #expect(r.method == .linear)
        #expect(r.modules.allSatisfy { $0.relativeError < 1e-6 })
    }
}

@Suite("combine: every dialect in, every dialect out")
struct CombineDialectTests {
    static let fixtures = URL(fileURLWithPath: combineFixtures).deletingLastPathComponent().path + "/Fixtures"
    static let inputs: [(String, Double)] = [("llama_adalora/adapter", 0.5), ("llama_sora/adapter", -1.25), ("llama_mlx/adapter", 0.75),
                                             ("llama_kohya/adapter/tiny_llama_kohya.safetensors", 1.5), ("llama_bf16_rslora_patterns/adapter", 0.3)]

    /// Σ wᵢ·sᵢ·Bᵢ·Aᵢ per module, each input read alone (kohya names resolved against the base).
    static func expected(base: String) throws -> [String: [Double]] {
        let b = try Checkpoint(path: base)
        var sum: [String: [Double]] = [:]
        for (path, w) in inputs {
            let adapter = try Adapter(path: fixtures + "/" + path)
            for (stored, named) in zip(adapter.modules, try adapter.modules(resolvedAgainst: b)) {
                var m = stored
                m.scale *= w
                let d = try delta(adapter, m)
                sum[named.module] = zip(sum[named.module] ?? [Double](repeating: 0, count: d.count), d).map { $0 + $1 }
            }
        }
        return sum
    }

    @Test("AdaLoRA, SoRA, mlx, kohya and rsLoRA-with-patterns inputs: cat, and svd at full rank, are Σ wᵢ·ΔWᵢ", arguments: [CombineMethod.cat, .svd])
    func everyDialectIn(method: CombineMethod) throws {
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        let base = Self.fixtures + "/llama_kohya/base"
        var o = CombineOptions(adapters: Self.inputs.map { (Self.fixtures + "/" + $0.0, $0.1) }, method: method, output: out + "/c")
        o.base = base
        if method == .svd { o.rule = .fixed(64) }
        let report = try Combine.run(o)
        let want = try Self.expected(base: base)
        let ours = try Adapter(path: out + "/c")
        #expect(Set(ours.modules.map(\.module)) == Set(want.keys))
        #expect(report.modules.contains { $0.inputs == 5 })
        for m in ours.modules {
            let error = relative(try delta(ours, m), want[m.module]!)
            #expect(error <= 1e-6, "\(method) \(m.module): \(error)")
        }
    }

    @Test("--to kohya and --to mlx write the same ΔW as the PEFT output", arguments: [Adapter.Format.kohya, .mlx])
    func everyDialectOut(format: Adapter.Format) throws {
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        let c = CombineCase.named("linear")
        _ = try Combine.run(c.options(output: out + "/peft"))
        var o = c.options(output: out + (format == .kohya ? "/k.safetensors" : "/mlx"))
        o.to = format
        o.base = c.base
        _ = try Combine.run(o)
        let peft = try Adapter(path: out + "/peft"), other = try Adapter(path: o.output)
        #expect(other.format == format)
        let resolved = try other.modules(resolvedAgainst: try Checkpoint(path: c.base))
        #expect(resolved.map(\.module) == peft.modules.map(\.module))
        for ((m, named), p) in zip(zip(other.modules, resolved), peft.modules) {
            #expect(named.module == p.module)
            #expect(relative(try delta(other, m), try delta(peft, p)) <= 1e-6, "\(p.module)")
        }
    }
}
