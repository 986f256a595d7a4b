import Foundation
@testable import GGUF
import LoRAKernels
import Testing

/// The Q8_0 C kernels (`Q8_0Blocks`, every instruction set this CPU runs) against the Swift block
/// loops of `GGMLQuantizer.q8_0` / `GGMLDequantizer.q8_0`, which the codec fixtures check against
/// gguf-py and ggml's C reference: the same bytes and bits.
@Suite("Q8_0 kernels equal the Swift reference bit for bit")
struct Q8_0KernelTests {
    // MARK: - References

    static func referenceEncode(_ values: [Float]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: values.count / 32 * 34)
        values.withUnsafeBufferPointer { v in
            out.withUnsafeMutableBytes { o in
                for b in 0..<(values.count / 32) { GGMLQuantizer.q8_0(v.baseAddress! + 32 * b, o.baseAddress! + 34 * b) }
            }
        }
        return out
    }

    static func referenceDecode(_ blocks: [UInt8]) -> [Float] {
        var out = [Float](repeating: 0, count: blocks.count / 34 * 32)
        blocks.withUnsafeBytes { x in
            out.withUnsafeMutableBufferPointer { y in
                for b in 0..<(blocks.count / 34) { GGMLDequantizer.q8_0(x.baseAddress! + 34 * b, y.baseAddress! + 32 * b) }
            }
        }
        return out
    }

    /// Σ want·got, Σ want², Σ got² in four lanes by index mod 4, as the kernels document it.
    static func referenceSums(target: [Float], old: [Float], stored: [Float]) -> (Double, Double, Double) {
        var d = [Double](repeating: 0, count: 4), w = d, q = d
        for i in target.indices {
            let b = Double(old[i]), want = Double(target[i]) - b, got = Double(stored[i]) - b
            d[i % 4] += want * got
            w[i % 4] += want * want
            q[i % 4] += got * got
        }
        return ((d[0] + d[1]) + (d[2] + d[3]), (w[0] + w[1]) + (w[2] + w[3]), (q[0] + q[1]) + (q[2] + q[3]))
    }

    // MARK: - Inputs

    /// Blocks of finite values covering the reference's edge cases: zeros, ties of roundf after
    /// scaling (amax 127 makes the scale 1), ±the largest float, subnormal blocks (whose inverse
    /// scale overflows), mixed magnitudes, then random blocks at many scales.
    static func finiteValues(blocks: Int, seed: UInt64) -> [Float] {
        var rng = SplitMix64(seed: seed)
        func uniform() -> Float { Float(rng.next() >> 40) / Float(1 << 24) * 2 - 1 }
        var v: [Float] = []
        v += [Float](repeating: 0, count: 32)
        v += [Float](repeating: -0.0, count: 31) + [0]
        v += [127, -127, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 126.5, -126.5, 0.49999997, -0.49999997, 3.5000002, 63.5, -63.5, 100.5]
            + (0..<16).map { Float($0) + 0.5 }
        v += [.greatestFiniteMagnitude, -.greatestFiniteMagnitude] + (0..<30).map { _ in uniform() * 1e38 }
        v += (0..<32).map { _ in uniform() * Float.leastNormalMagnitude }
        v += [Float.leastNonzeroMagnitude, -Float.leastNonzeroMagnitude] + [Float](repeating: 0, count: 30)
        v += (0..<32).map { Float(bitPattern: UInt32($0 + 1) * 0x10_0001) }
        v += (0..<32).map { $0 == 7 ? 1e-30 : uniform() * 1e-42 }
        v += (0..<32).map { $0 % 2 == 0 ? 65504 * 127 * uniform() : uniform() }
        while v.count < blocks * 32 {
            let scale = Float(pow(2.0, Double(Int(rng.next() % 120) - 60)))
            v += (0..<32).map { _ in uniform() * scale }
        }
        return Array(v.prefix(blocks * 32))
    }

    static func encode(_ values: [Float], isa: InstructionSet) -> (bytes: [UInt8], bad: Int?) {
        var out = [UInt8](repeating: 0xA5, count: values.count / 32 * 34)
        let bad = values.withUnsafeBufferPointer { v in out.withUnsafeMutableBytes { Q8_0Blocks.encode(v, into: $0, using: isa) } }
        return (out, bad)
    }

    // MARK: - Tests

    @Test("encode equals GGMLQuantizer.q8_0 on edge-case and random blocks", arguments: InstructionSet.available)
    func encode(isa: InstructionSet) {
        let values = Q8_0KernelTests.finiteValues(blocks: 400, seed: 1)
        let got = Q8_0KernelTests.encode(values, isa: isa)
        #expect(got.bad == nil)
        let want = Q8_0KernelTests.referenceEncode(values)
        if let at = want.indices.first(where: { got.bytes[$0] != want[$0] }) {
            Issue.record("\(isa): block \(at / 34) byte \(at % 34): \(got.bytes[at]) vs \(want[at])")
        }
    }

    @Test("encode finds the first NaN or infinity, as GGMLQuantizer refuses it", arguments: InstructionSet.available)
    func encodeNonFinite(isa: InstructionSet) {
        for (position, bad) in [(0, Float.nan), (31, .infinity), (70, -.infinity), (95, .nan), (5 * 32 + 17, Float(bitPattern: 0x7F80_0001))] {
            var values = Q8_0KernelTests.finiteValues(blocks: 8, seed: 2)
            values[position] = bad
            values[position + 1] = .nan  // a later one is not reported
            #expect(Q8_0KernelTests.encode(values, isa: isa).bad == position, "\(isa) \(position)")
        }
    }

    @Test("decode equals GGMLDequantizer.q8_0 on random blocks, special half scales included", arguments: InstructionSet.available)
    func decode(isa: InstructionSet) {
        var rng = SplitMix64(seed: 3)
        var blocks = (0..<(300 * 34)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        // Scales: +0, −0, the smallest subnormal, the largest half, ±infinity, a quiet and a signalling NaN.
        for (k, scale) in [UInt16(0x0000), 0x8000, 0x0001, 0x7BFF, 0x7C00, 0xFC00, 0x7E00, 0x7C01].enumerated() {
            blocks[34 * k] = UInt8(scale & 0xFF)
            blocks[34 * k + 1] = UInt8(scale >> 8)
        }
        var got = [Float](repeating: 0, count: 300 * 32)
        blocks.withUnsafeBytes { b in got.withUnsafeMutableBufferPointer { Q8_0Blocks.decode(b, into: $0, using: isa) } }
        let want = Q8_0KernelTests.referenceDecode(blocks)
        if let at = want.indices.first(where: { got[$0].bitPattern != want[$0].bitPattern }) {
            Issue.record("\(isa): element \(at): \(got[at]) vs \(want[at])")
        }
    }

    @Test("requantize equals encode, the reference survival sums (four lanes) and the changed-block count",
          arguments: InstructionSet.available)
    func requantize(isa: InstructionSet) {
        // Blocks whose scale would overflow the half (decoding to infinities) scaled down to finite ones.
        let base = Q8_0KernelTests.finiteValues(blocks: 256, seed: 4).map { abs($0) > 1e6 ? $0 * 1e-32 : $0 }
        let old = Q8_0KernelTests.referenceEncode(base)
        let oldValues = Q8_0KernelTests.referenceDecode(old)
        var rng = SplitMix64(seed: 5)
        // Most blocks changed a little (some enough to move codes), some not at all.
        let target = oldValues.enumerated().map { i, v -> Float in
            (i / 32) % 5 == 0 ? v : v + v * Float(Int(rng.next() % 2001) - 1000) * 1e-5
        }
        var bytes = [UInt8](repeating: 0, count: old.count)
        let result = target.withUnsafeBufferPointer { t in
            old.withUnsafeBytes { o in bytes.withUnsafeMutableBytes { Q8_0Blocks.requantize(t, old: o, into: $0, using: isa) } }
        }
        guard case let .success(got) = result else {
            Issue.record("\(isa): refused finite values: \(result)")
            return
        }
        let want = Q8_0KernelTests.referenceEncode(target)
        #expect(bytes == want, "\(isa)")
        let sums = Q8_0KernelTests.referenceSums(target: target, old: oldValues, stored: Q8_0KernelTests.referenceDecode(want))
        #expect(got.dot.bitPattern == sums.0.bitPattern && got.want.bitPattern == sums.1.bitPattern && got.got.bitPattern == sums.2.bitPattern,
                "\(isa): \(got) vs \(sums)")
        let changed = (0..<(old.count / 34)).filter { old[(34 * $0)..<(34 * $0 + 34)] != want[(34 * $0)..<(34 * $0 + 34)] }.count
        #expect(got.changedBlocks == changed && changed > 0 && changed < old.count / 34, "\(isa)")
        // The same sums as Bnb4bit.deltaSums over the decoded arrays (the other block types' path).
        let stored = Q8_0KernelTests.referenceDecode(want)
        let delta = target.withUnsafeBufferPointer { t in
            oldValues.withUnsafeBytes { o in stored.withUnsafeBytes { Bnb4bit.deltaSums(target: t, old: o, back: $0, format: .f32) } }
        }
        #expect(delta.dot.bitPattern == got.dot.bitPattern && delta.want.bitPattern == got.want.bitPattern && delta.got.bitPattern == got.got.bitPattern)
    }

    @Test("requantize reports the first NaN or infinity", arguments: InstructionSet.available)
    func requantizeNonFinite(isa: InstructionSet) {
        var target = Q8_0KernelTests.finiteValues(blocks: 4, seed: 6)
        let old = Q8_0KernelTests.referenceEncode(target)
        target[77] = -.infinity
        var bytes = [UInt8](repeating: 0, count: old.count)
        let result = target.withUnsafeBufferPointer { t in
            old.withUnsafeBytes { o in bytes.withUnsafeMutableBytes { Q8_0Blocks.requantize(t, old: o, into: $0, using: isa) } }
        }
        guard case let .failure(bad) = result else {
            Issue.record("\(isa): accepted infinity")
            return
        }
        #expect(bad.index == 77)
    }

    @Test("GGMLQuantizer and GGMLDequantizer run the kernels for Q8_0: the same bytes as the block loops")
    func codecUsesKernels() throws {
        let values = Q8_0KernelTests.finiteValues(blocks: 64, seed: 7)
        let bytes = try values.withUnsafeBufferPointer { try GGMLQuantizer.quantize($0, type: .q8_0) }
        #expect(bytes == Q8_0KernelTests.referenceEncode(values))
        let decoded = try bytes.withUnsafeBytes { try GGMLDequantizer.dequantize($0, type: .q8_0) }
        #expect(decoded.map(\.bitPattern) == Q8_0KernelTests.referenceDecode(bytes).map(\.bitPattern))
        var bad = values
        bad[100] = .nan
        #expect(throws: GGUFError.self) { try bad.withUnsafeBufferPointer { try GGMLQuantizer.quantize($0, type: .q8_0) } }
    }
}
