import Foundation
@testable import LoRAKernels
import Testing

/// The formulas the kernels must reproduce, copied from the Swift loops LoRACore used before them
/// (`BnbQuantization.dequantize`, `BnbQuantizer`; checked against bitsandbytes' fixtures): plain
/// Swift loops, one element at a time. (The test names keep `BnbQuantizer` for that reference.)
private enum Reference {
    static func bucketizer(_ code: [Float]) -> (bounds: [Float], order: [Int]) {
        let order = code.indices.sorted { code[$0] < code[$1] || (code[$0] == code[$1] && $0 < $1) }
        let bounds = (0..<(order.count - 1)).map { (code[order[$0]] + code[order[$0 + 1]]) / 2 }
        return (bounds, order)
    }

    static func bucket(_ x: Float, _ bounds: [Float]) -> Int {
        var lo = 0, hi = bounds.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if bounds[mid] < x { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    static func blockwise(_ values: [Float], blocksize: Int, code: [Float]) -> ([UInt8], [Float]) {
        let (bounds, order) = bucketizer(code)
        var codes = [UInt8](repeating: 0, count: values.count)
        var absmax: [Float] = []
        var start = 0
        while start < values.count {
            let end = min(start + blocksize, values.count)
            var m: Float = 0
            for i in start..<end { m = max(m, abs(values[i])) }
            absmax.append(m)
            let inv = 1 / max(m, 1e-38)
            for i in start..<end {
                let scaled = min(max(values[i] * inv, -1), 1)
                codes[i] = UInt8(order[bucket(scaled, bounds)])
            }
            start = end
        }
        return (codes, absmax)
    }

    /// blockwise + packing, as LoRACore's former BnbQuantizer.quantize.
    static func quantize(_ values: [Float], blocksize: Int, code: [Float]) -> (packed: [UInt8], absmax: [Float]) {
        var (codes, absmax) = blockwise(values, blocksize: blocksize, code: code)
        if codes.count % 2 == 1 { codes.append(0) }
        var packed = [UInt8](repeating: 0, count: codes.count / 2)
        for j in packed.indices { packed[j] = codes[2 * j] << 4 | codes[2 * j + 1] }
        return (packed, absmax)
    }

    /// LoRACore's former BnbQuantizer.quantize's double quantization of the scales.
    static func nested(_ absmax: [Float], map: [Float], blocksize: Int) -> (codes: [UInt8], nestedAbsmax: [Float], offset: Float) {
        let offset = Float(absmax.reduce(0.0) { $0 + Double($1) } / Double(absmax.count))
        let (codes, nested) = blockwise(absmax.map { $0 - offset }, blocksize: blocksize, code: map)
        return (codes, nested, offset)
    }

    /// BnbQuantization.dequantize's loop over a range, stored in `format`.
    static func decode(_ packed: [UInt8], _ range: Range<Int>, absmax: [Float], blocksize: Int, quantMap: [Float],
                       format: FloatCodec.Format) -> [UInt8] {
        let values = range.map { i -> Float in
            let byte = packed[i / 2]
            let code = i % 2 == 0 ? Int(byte >> 4) : Int(byte & 0x0F)
            return FloatCodec.roundTrip(quantMap[code] * absmax[i / blocksize], format: format)
        }
        return Bnb4bitTests.encode(values, format)
    }

    /// BnbQuantization.dequantize's absmax resolution.
    static func resolve(_ codes: [UInt8], _ blocks: Range<Int>, nestedMap: [Float], nestedAbsmax: [Float], nestedBlocksize: Int,
                        offset: Float) -> [Float] {
        blocks.map { j in nestedMap[Int(codes[j])] * nestedAbsmax[j / nestedBlocksize] + offset }
    }
}

/// A safetensors file read by hand (LoRAKernels' tests see no SafeTensors module): name → (dtype, shape, bytes).
private struct TensorFile {
    var tensors: [String: (dtype: String, shape: [Int], bytes: [UInt8])] = [:]

    init(_ path: String) throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        let length = data.prefix(8).enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        let header = try #require(try JSONSerialization.jsonObject(with: data.subdata(in: 8..<(8 + length))) as? [String: Any])
        for (name, value) in header where name != "__metadata__" {
            let entry = try #require(value as? [String: Any])
            let offsets = try #require(entry["data_offsets"] as? [Int]), shape = try #require(entry["shape"] as? [Int])
            let bytes = [UInt8](data.subdata(in: (8 + length + offsets[0])..<(8 + length + offsets[1])))
            tensors[name] = (try #require(entry["dtype"] as? String), shape, bytes)
        }
    }

    func bytes(_ name: String) throws -> [UInt8] { try #require(tensors[name]).bytes }

    /// F32 or BF16 values, widened.
    func floats(_ name: String) throws -> [Float] {
        let t = try #require(tensors[name])
        let format: FloatCodec.Format = t.dtype == "BF16" ? .bf16 : t.dtype == "F16" ? .f16 : .f32
        var out = [Float](repeating: 0, count: t.bytes.count / format.size)
        t.bytes.withUnsafeBytes { raw in out.withUnsafeMutableBufferPointer { FloatCodec.decode(raw, format: format, into: $0) } }
        return out
    }
}

@Suite("bitsandbytes 4-bit kernels")
struct Bnb4bitTests {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("LoRACoreTests/QuantFixtures").path

    /// Positions where two arrays differ (a count keeps failure messages short).
    static func differing<T: Equatable>(_ x: [T], _ y: [T]) -> Int {
        x.count == y.count ? zip(x, y).filter { $0 != $1 }.count : max(x.count, y.count)
    }

    static func differingBits(_ x: [Float], _ y: [Float]) -> Int { differing(x.map(\.bitPattern), y.map(\.bitPattern)) }

    static func encode(_ v: [Float], _ format: FloatCodec.Format) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: v.count * format.size)
        v.withUnsafeBufferPointer { src in bytes.withUnsafeMutableBytes { FloatCodec.encode(src, format: format, into: $0) } }
        return bytes
    }

    /// Uniform in [-1, 1).
    static func uniform(_ rng: inout SplitMix64) -> Float { Float(rng.next() >> 40) * 0x1p-23 - 1 }

    // MARK: - Kernel calls

    static func decode(_ packed: [UInt8], _ range: Range<Int>, absmax: [Float], blocksize: Int, quantMap: [Float],
                       format: FloatCodec.Format, isa: InstructionSet, misalign: Int = 0) -> [UInt8] {
        // `misalign` shifts the output by that many bytes: stored tensors need not be aligned.
        var out = [UInt8](repeating: 0xA5, count: range.count * format.size + misalign)
        packed.withUnsafeBytes { p in
            absmax.withUnsafeBufferPointer { a in
                out.withUnsafeMutableBytes { o in
                    Bnb4bit.decode(p, elements: range, absmax: a, blocksize: blocksize, quantMap: quantMap,
                                   into: UnsafeMutableRawBufferPointer(rebasing: o[misalign...]), format: format, using: isa)
                }
            }
        }
        return Array(out[misalign...])
    }

    static func quantize(_ values: [Float], blocksize: Int, code: [Float], isa: InstructionSet) -> (packed: [UInt8], absmax: [Float]) {
        let (bounds, order) = Bnb4bit.bucketizer(code: code)
        var packed = [UInt8](repeating: 0xA5, count: (values.count + 1) / 2)
        var absmax = [Float](repeating: .nan, count: (values.count + blocksize - 1) / blocksize)
        values.withUnsafeBufferPointer { v in
            packed.withUnsafeMutableBytes { p in
                absmax.withUnsafeMutableBufferPointer { a in
                    Bnb4bit.quantize(v, blocksize: blocksize, bounds: bounds, order: order, packed: p, absmax: a, using: isa)
                }
            }
        }
        return (packed, absmax)
    }

    static func resolve(_ codes: [UInt8], _ blocks: Range<Int>, nestedAbsmax: [Float], nestedBlocksize: Int, offset: Float) -> [Float] {
        var out = [Float](repeating: .nan, count: blocks.count)
        codes.withUnsafeBytes { c in
            nestedAbsmax.withUnsafeBufferPointer { n in
                out.withUnsafeMutableBufferPointer { o in
                    Bnb4bit.resolveAbsmax(codes: c, blocks: blocks, nestedMap: Bnb4bit.nestedMap, nestedAbsmax: n,
                                          nestedBlocksize: nestedBlocksize, offset: offset, into: o)
                }
            }
        }
        return out
    }

    // MARK: - Decode

    struct DecodeCase: Sendable, CustomStringConvertible {
        var format: FloatCodec.Format
        var blocksize: Int
        var description: String { "\(format) blocksize \(blocksize)" }
    }

    static let decodeCases = [FloatCodec.Format.f32, .f16, .bf16].flatMap { f in [64, 128, 4096, 7, 1].map { DecodeCase(format: f, blocksize: $0) } }

    @Test("decode equals dequantize's loop, over ranges starting mid-tensor, odd counts and specials",
          arguments: InstructionSet.available, decodeCases)
    func decode(isa: InstructionSet, c: DecodeCase) {
        var rng = SplitMix64(seed: UInt64(c.blocksize) &* 31 &+ UInt64(c.format.size))
        let n = 5 * max(c.blocksize, 64) + 37  // odd: the last byte's low nibble is padding
        let blocks = (n + c.blocksize - 1) / c.blocksize
        let packed = (0..<(n + 1) / 2).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        // Scales across the range: ordinary, tiny (subnormal products), zero, f16 overflow, subnormal itself.
        let absmax = (0..<blocks).map { b -> Float in
            switch b % 6 {
            case 0: return abs(Bnb4bitTests.uniform(&rng)) * 0.05
            case 1: return Float(bitPattern: 0x0080_0000 | UInt32(rng.next() & 0x7F_FFFF)) * 4  // products go subnormal
            case 2: return 0
            case 3: return 70_000 + abs(Bnb4bitTests.uniform(&rng)) * 1e5  // beyond f16: ±inf
            case 4: return Float(bitPattern: UInt32(rng.next() & 0x7F_FFFF))  // subnormal scale
            default: return abs(Bnb4bitTests.uniform(&rng)) * 3
            }
        }
        var ranges: [Range<Int>] = [0..<n, 1..<n, 0..<(n - 1), 0..<0, 5..<6, 6..<7, (n - 1)..<n, (c.blocksize - 1)..<min(n, 3 * c.blocksize + 70),
                                    65..<(n - 64), 64..<(n - 3), 129..<200]
        for _ in 0..<40 {
            let first = Int(rng.next() % UInt64(n)), count = Int(rng.next() % UInt64(n - first + 1))
            ranges.append(first..<(first + count))
        }
        for map in [Bnb4bit.nf4Map, Bnb4bit.fp4Map] {
            for (k, range) in ranges.enumerated() {
                let got = Bnb4bitTests.decode(packed, range, absmax: absmax, blocksize: c.blocksize, quantMap: map, format: c.format,
                                              isa: isa, misalign: k % 2)
                let want = Reference.decode(packed, range, absmax: absmax, blocksize: c.blocksize, quantMap: map, format: c.format)
                #expect(Bnb4bitTests.differing(got, want) == 0, "\(isa) \(c) range \(range)")
            }
        }
    }

    @Test("decode keeps NaN scales NaN and signed zeros signed", arguments: InstructionSet.available, [FloatCodec.Format.f32, .f16, .bf16])
    func decodeSpecials(isa: InstructionSet, format: FloatCodec.Format) {
        let n = 200
        let packed = (0..<n / 2).map { UInt8(truncatingIfNeeded: $0 &* 37) }
        let absmax: [Float] = [.nan, 0, .infinity, 1]  // blocks of 64: NaN, ±0 (code 7 of NF4 is +0, code 0 is -1), inf
        let out = Bnb4bitTests.decode(packed, 0..<n, absmax: absmax, blocksize: 64, quantMap: Bnb4bit.nf4Map, format: format, isa: isa)
        var back = [Float](repeating: 0, count: n)
        out.withUnsafeBytes { raw in back.withUnsafeMutableBufferPointer { FloatCodec.decode(raw, format: format, into: $0) } }
        let want = Reference.decode(packed, 0..<n, absmax: absmax, blocksize: 64, quantMap: Bnb4bit.nf4Map, format: format)
        var wantBack = [Float](repeating: 0, count: n)
        want.withUnsafeBytes { raw in wantBack.withUnsafeMutableBufferPointer { FloatCodec.decode(raw, format: format, into: $0) } }
        for i in 0..<n {
            if wantBack[i].isNaN { #expect(back[i].isNaN, "\(i)") } else { #expect(back[i].bitPattern == wantBack[i].bitPattern, "\(i)") }
        }
    }

    // MARK: - Absmax resolution

    @Test("resolveAbsmax rounds the product and the sum separately (a fused multiply-add would differ)",
          arguments: [256, 3, 1])
    func resolve(nestedBlocksize: Int) {
        var rng = SplitMix64(seed: UInt64(nestedBlocksize))
        let blocks = 3000
        let codes = (0..<blocks).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        let nested = (0..<((blocks + nestedBlocksize - 1) / nestedBlocksize)).map { _ in abs(Bnb4bitTests.uniform(&rng)) * 0.01 + 1e-4 }
        for offset: Float in [0.0172_9431, -0.3, 0] {
            // The data must tell the two apart, or the test could not catch a contraction.
            let fusedDiffers = (0..<blocks).contains { j in
                offset.addingProduct(Bnb4bit.nestedMap[Int(codes[j])], nested[j / nestedBlocksize])
                    != Bnb4bit.nestedMap[Int(codes[j])] * nested[j / nestedBlocksize] + offset
            }
            #expect(fusedDiffers || offset == 0)
            for range in [0..<blocks, 1..<blocks, 255..<513, 700..<701, 9..<9] {
                let got = Bnb4bitTests.resolve(codes, range, nestedAbsmax: nested, nestedBlocksize: nestedBlocksize, offset: offset)
                let want = Reference.resolve(codes, range, nestedMap: Bnb4bit.nestedMap, nestedAbsmax: nested,
                                             nestedBlocksize: nestedBlocksize, offset: offset)
                #expect(Bnb4bitTests.differingBits(got, want) == 0, "offset \(offset) range \(range)")
            }
        }
    }

    // MARK: - Quantize

    /// Values exercising every path: ordinary, bf16-rounded, wide exponents, zero blocks, subnormal
    /// blocks, values exactly on the midpoints (scale 1 and 0.5, so x·inv is exact) and their
    /// neighbours, then an odd tail.
    static func quantizeInput(blocksize: Int, code: [Float], seed: UInt64) -> [Float] {
        var rng = SplitMix64(seed: seed)
        let (bounds, _) = Bnb4bit.bucketizer(code: code)
        let segment = max(blocksize, 64)
        var v: [Float] = []
        for kind in 0..<8 {
            for _ in 0..<segment {
                let i = v.count
                let startsBlock = i % blocksize == 0
                let b = bounds[Int(rng.next() % 15)]
                switch kind {
                case 0: v.append(uniform(&rng) * 0.02)
                case 1: v.append(FloatCodec.roundTrip(uniform(&rng) * 0.03, format: .bf16))
                case 2: v.append(uniform(&rng) * Float(sign: .plus, exponent: Int(rng.next() % 60) - 40, significand: 1))
                case 3: v.append(rng.next() % 2 == 0 ? 0 : -0.0)
                case 4: v.append(Float(bitPattern: UInt32(rng.next() & 0x807F_FFFF)))  // ±subnormal (or ±0)
                case 5: v.append(startsBlock ? 1 : [b, b.nextUp, b.nextDown][Int(rng.next() % 3)])
                case 6: v.append(startsBlock ? -0.5 : [b, b.nextUp, b.nextDown][Int(rng.next() % 3)] * 0.5)
                default: v.append(uniform(&rng) * 1e-37)  // absmax below 1e-38 in places
                }
            }
        }
        for _ in 0..<37 { v.append(uniform(&rng)) }
        return v
    }

    struct QuantizeCase: Sendable, CustomStringConvertible {
        var map: String
        var blocksize: Int
        var description: String { "\(map) blocksize \(blocksize)" }
    }

    static let quantizeCases = ["nf4", "fp4", "random"].flatMap { m in [64, 128, 4096, 7, 1].map { QuantizeCase(map: m, blocksize: $0) } }

    static func code(_ name: String) -> [Float] {
        switch name {
        case "nf4": return Bnb4bit.nf4Map
        case "fp4": return Bnb4bit.fp4Map
        default:
            // An unsorted map with a repeated value (ties in the bucketizer's order).
            var rng = SplitMix64(seed: 99)
            var m = (0..<15).map { _ in uniform(&rng) }
            m.append(m[3])
            return m
        }
    }

    @Test("quantize equals BnbQuantizer.blockwise and its packing bit for bit", arguments: InstructionSet.available, quantizeCases)
    func quantize(isa: InstructionSet, c: QuantizeCase) {
        let code = Bnb4bitTests.code(c.map)
        let values = Bnb4bitTests.quantizeInput(blocksize: c.blocksize, code: code, seed: UInt64(c.blocksize) &+ UInt64(c.map.count))
        for count in [values.count, values.count - 1, 1, 0, min(values.count, c.blocksize + 1)] {
            let slice = Array(values.prefix(count))
            let got = Bnb4bitTests.quantize(slice, blocksize: c.blocksize, code: code, isa: isa)
            let want = Reference.quantize(slice, blocksize: c.blocksize, code: code)
            #expect(Bnb4bitTests.differing(got.packed, want.packed) == 0, "\(isa) \(c) count \(count)")
            #expect(Bnb4bitTests.differingBits(got.absmax, want.absmax) == 0, "\(isa) \(c) count \(count)")
        }
    }

    @Test("quantize treats NaN and infinities as the reference does", arguments: InstructionSet.available)
    func quantizeSpecials(isa: InstructionSet) {
        var values = [Float](repeating: 0.01, count: 200)
        values[3] = .nan          // block 0: NaN ignored by the max, coded as bucket 0
        values[70] = .infinity    // block 1: inv = 0, the infinity itself becomes NaN
        values[71] = -5
        values[140] = -.infinity  // block 2
        values[141] = .nan
        for map in [Bnb4bit.nf4Map, Bnb4bit.fp4Map] {
            let got = Bnb4bitTests.quantize(values, blocksize: 64, code: map, isa: isa)
            let want = Reference.quantize(values, blocksize: 64, code: map)
            #expect(Bnb4bitTests.differing(got.packed, want.packed) == 0)
            #expect(Bnb4bitTests.differingBits(got.absmax, want.absmax) == 0)
        }
    }

    @Test("bucketizer equals BnbQuantizer.bucketizer", arguments: ["nf4", "fp4", "random", "nested"])
    func bucketizer(map: String) {
        let code = map == "nested" ? Bnb4bit.nestedMap : Bnb4bitTests.code(map)
        let (bounds, order) = Bnb4bit.bucketizer(code: code)
        let want = Reference.bucketizer(code)
        #expect(Bnb4bitTests.differingBits(bounds, want.bounds) == 0)
        #expect(order.map(Int.init) == want.order)
    }

    @Test("The nested quantization's two-level bound count equals BnbQuantizer.bucket's binary search",
          arguments: ["nested", "nf4", "fp4", "random"])
    func boundCounter(map: String) {
        let code = map == "nested" ? Bnb4bit.nestedMap : Bnb4bitTests.code(map)
        let (bounds, _) = Bnb4bit.bucketizer(code: code)
        let counter = Bnb4bit.BoundCounter(bounds)
        var probes: [Float] = [.nan, .infinity, -.infinity, 0, -0.0, 1, -1, 2, -2]
        for b in bounds { probes += [b, b.nextUp, b.nextDown] }
        var rng = SplitMix64(seed: 5)
        for _ in 0..<2000 { probes.append(Bnb4bitTests.uniform(&rng) * 1.1) }
        let wrong = probes.filter { counter.count(below: $0) != Reference.bucket($0, bounds) }
        #expect(wrong.isEmpty, "\(wrong.prefix(5))")
    }

    @Test("quantizeAbsmax equals BnbQuantizer's double quantization", arguments: [1, 255, 256, 257, 5000])
    func quantizeAbsmax(blocks: Int) {
        var rng = SplitMix64(seed: UInt64(blocks))
        let absmax = (0..<blocks).map { _ in abs(Bnb4bitTests.uniform(&rng)) * 0.04 + 0.001 }
        let got = absmax.withUnsafeBufferPointer { Bnb4bit.quantizeAbsmax($0) }
        let want = Reference.nested(absmax, map: Bnb4bit.nestedMap, blocksize: 256)
        #expect(Bnb4bitTests.differing(got.codes, want.codes) == 0)
        #expect(Bnb4bitTests.differingBits(got.nestedAbsmax, want.nestedAbsmax) == 0)
        #expect(got.offset.bitPattern == want.offset.bitPattern)
    }

    // MARK: - Against bitsandbytes' own outputs (LoRACore's fixtures)

    static let fixtureCases = ["qlora_nf4_double", "qlora_fp4", "qlora_nf4", "qlora_nf4_double_b128"]

    @Test("The code tables are those transformers stores", arguments: fixtureCases)
    func tables(fixture: String) throws {
        let file = try TensorFile("\(Bnb4bitTests.fixtures)/\(fixture)/base/model.safetensors")
        for name in file.tensors.keys where name.hasSuffix(".quant_map") {
            #expect(try file.floats(name).map(\.bitPattern) == (fixture == "qlora_fp4" ? Bnb4bit.fp4Map : Bnb4bit.nf4Map).map(\.bitPattern))
        }
        for name in file.tensors.keys where name.hasSuffix(".nested_quant_map") {
            #expect(try file.floats(name).map(\.bitPattern) == Bnb4bit.nestedMap.map(\.bitPattern))
        }
    }

    @Test("resolveAbsmax + decode equal bitsandbytes' dequantize_4bit", arguments: InstructionSet.available, fixtureCases)
    func fixtureDecode(isa: InstructionSet, fixture: String) throws {
        let base = try TensorFile("\(Bnb4bitTests.fixtures)/\(fixture)/base/model.safetensors")
        let dense = try TensorFile("\(Bnb4bitTests.fixtures)/\(fixture)/dequantized/model.safetensors")
        var checked = 0
        for name in base.tensors.keys where name.contains(".quant_state.bitsandbytes__") {
            let weight = String(name[..<name.range(of: ".quant_state.")!.lowerBound])
            let state = try #require(try JSONSerialization.jsonObject(with: Data(base.bytes(name))) as? [String: Any])
            let blocksize = try #require(state["blocksize"] as? Int)
            let n = try #require(state["shape"] as? [Int]).reduce(1, *)
            let blocks = (n + blocksize - 1) / blocksize
            var absmax: [Float]
            if base.tensors[weight + ".absmax"]?.dtype == "U8" {
                let offset = Float(try #require(state["nested_offset"] as? Double))
                absmax = Bnb4bitTests.resolve(try base.bytes(weight + ".absmax"), 0..<blocks, nestedAbsmax: try base.floats(weight + ".nested_absmax"),
                                              nestedBlocksize: try #require(state["nested_blocksize"] as? Int), offset: offset)
            } else {
                absmax = try base.floats(weight + ".absmax")
            }
            let got = Bnb4bitTests.decode(try base.bytes(weight), 0..<n, absmax: absmax, blocksize: blocksize,
                                          quantMap: try base.floats(weight + ".quant_map"), format: .bf16, isa: isa)
            #expect(Bnb4bitTests.differing(got, try dense.bytes(weight)) == 0, "\(weight)")
            checked += 1
        }
        #expect(checked == 7)
    }

    @Test("quantize (+ quantizeAbsmax) of the merged weights equals bitsandbytes' quantize_4bit", arguments: InstructionSet.available, fixtureCases)
    func fixtureQuantize(isa: InstructionSet, fixture: String) throws {
        let merged = try TensorFile("\(Bnb4bitTests.fixtures)/\(fixture)/merged/model.safetensors")
        let expected = try TensorFile("\(Bnb4bitTests.fixtures)/\(fixture)/requantized.safetensors")
        let offsets = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(Bnb4bitTests.fixtures)/\(fixture)/requantized_offsets.json"))) as? [String: Double] ?? [:]
        let blocksize = fixture.hasSuffix("b128") ? 128 : 64
        for weight in ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.v_proj.weight"] {
            let q = Bnb4bitTests.quantize(try merged.floats(weight), blocksize: blocksize,
                                          code: fixture == "qlora_fp4" ? Bnb4bit.fp4Map : Bnb4bit.nf4Map, isa: isa)
            #expect(Bnb4bitTests.differing(q.packed, try expected.bytes(weight)) == 0, "\(weight)")
            if let offset = offsets[weight] {
                let nested = q.absmax.withUnsafeBufferPointer { Bnb4bit.quantizeAbsmax($0) }
                #expect(Bnb4bitTests.differing(nested.codes, try expected.bytes(weight + ".absmax")) == 0)
                #expect(Bnb4bitTests.differingBits(nested.nestedAbsmax, try expected.floats(weight + ".nested_absmax")) == 0)
                #expect(Double(nested.offset) == offset)
            } else {
                #expect(Bnb4bitTests.differingBits(q.absmax, try expected.floats(weight + ".absmax")) == 0)
            }
        }
    }
}
