import Foundation
@testable import LoRAKernels
import Testing

/// The block-scaled FP8 kernels against the per-value Swift rules of `FP8E4M3` (themselves checked
/// against torch's float8_e4m3fn), on every instruction set this CPU has.
@Suite("FP8 block kernels")
struct FP8BlockKernelTests {
    /// Values that hit every path: zeros, ±448 and beyond once scaled, E4M3 and fp32 subnormals,
    /// ties of both roundings, infinities and NaNs (with payloads and signs).
    static let edges: [Float] = [
        0, -0.0, 448, -448, 449, -449, 464, 465, -465, 480, -480, 1e6, -1e6, .infinity, -.infinity, .nan, -.nan,
        Float(bitPattern: 0x7FA0_0001), Float(bitPattern: 0xFFC1_2345), 0x1p-9, -0x1p-9, 0x1p-10, 0x3p-10, 0x5p-10, 0x7p-10, 0x15p-10,
        0x1p-6, 0x1.fp-7, -0x1.fp-7, 1.0625, 1.1875, 1.0624, 1.0626, 1e-40, -1e-40, .leastNonzeroMagnitude, .greatestFiniteMagnitude,
    ]

    /// `count` values: the edges, any bit patterns, and values of a merged weight's size.
    static func values(_ count: Int, seed: UInt64) -> [Float] {
        var g = SplitMix64(seed: seed)
        return (0..<count).map { i in
            switch g.next() % 4 {
            case 0: return edges[i % edges.count]
            case 1: return Float(bitPattern: UInt32(truncatingIfNeeded: g.next()))
            default: return Float(Int64(bitPattern: g.next()) >> 40) * 0x1p-28
            }
        }
    }

    /// A weight's shape and block tiling, and the element range a kernel call covers.
    struct Case: Sendable, CustomTestStringConvertible {
        var rows: Int, cols: Int, blockRows: Int, blockCols: Int, first: Int, count: Int
        var testDescription: String { "\(rows)×\(cols) in \(blockRows)×\(blockCols), elements \(first)..<\(first + count)" }
        var grid: BlockGrid { BlockGrid(cols: cols, blockRows: blockRows, blockCols: blockCols) }
        var blocks: Int { (rows + blockRows - 1) / blockRows * ((cols + blockCols - 1) / blockCols) }
        func block(of e: Int) -> Int { (e / cols / blockRows) * ((cols + blockCols - 1) / blockCols) + (e % cols) / blockCols }
    }

    static let cases = [
        Case(rows: 256, cols: 256, blockRows: 128, blockCols: 128, first: 0, count: 65536),  // whole blocks
        Case(rows: 300, cols: 200, blockRows: 128, blockCols: 128, first: 0, count: 60000),  // partial edge blocks
        Case(rows: 37, cols: 45, blockRows: 4, blockCols: 7, first: 101, count: 1200),       // a range inside rows, short runs
        Case(rows: 5, cols: 1000, blockRows: 1, blockCols: 1000, first: 999, count: 3),      // int8's one block per row
        Case(rows: 3, cols: 19, blockRows: 2, blockCols: 16, first: 3, count: 1),            // one element
    ]

    /// Per block a forward scale (from an absmax, or 1, or extreme) and the stored one, 1/forward.
    static func scales(_ c: Case, seed: UInt64) -> (forward: [Float], stored: [Float]) {
        var g = SplitMix64(seed: seed)
        let forward: [Float] = (0..<c.blocks).map { b in
            switch b % 6 {
            case 0: return 1
            case 1: return 1e30
            case 2: return 0x1p-20
            default: return (1 / (Float(g.next() % 1_000_000 + 1) * 0x1p-12)) * 448
            }
        }
        return (forward, forward.map { 1 / $0 })
    }

    static func bytes(_ values: [Float], _ format: FloatCodec.Format) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: values.count * format.size)
        values.withUnsafeBufferPointer { v in out.withUnsafeMutableBytes { FloatCodec.encode(v, format: format, into: $0) } }
        return out
    }

    @Test("blockAbsmax: max |v| per block over the range, NaN ignored, merged into the amax given", arguments: InstructionSet.available, cases)
    func absmax(isa: InstructionSet, c: Case) {
        let v = FP8BlockKernelTests.values(c.count, seed: 1)
        var expected = (0..<c.blocks).map { $0 % 3 == 0 ? Float(0x1p-3) : 0 }
        var got = expected
        for i in 0..<c.count { expected[c.block(of: c.first + i)] = Swift.max(expected[c.block(of: c.first + i)], abs(v[i])) }
        v.withUnsafeBufferPointer { v in got.withUnsafeMutableBufferPointer { FP8E4M3.blockAbsmax(v, first: c.first, grid: c.grid, into: $0, using: isa) } }
        #expect(got.map(\.bitPattern) == expected.map(\.bitPattern))
    }

    @Test("quantize: codes = encode(clamp(v·forward, ±448)) and back = decode(code)·stored rounded to the format, bit for bit",
          arguments: InstructionSet.available, [FloatCodec.Format.f32, .f16, .bf16])
    func quantize(isa: InstructionSet, format: FloatCodec.Format) {
        for (k, c) in FP8BlockKernelTests.cases.enumerated() {
            let v = FP8BlockKernelTests.values(c.count, seed: UInt64(10 + k))
            let (forward, stored) = FP8BlockKernelTests.scales(c, seed: UInt64(20 + k))
            let expectedCodes = (0..<c.count).map { i in
                FP8E4M3.encode(Swift.min(Swift.max(v[i] * forward[c.block(of: c.first + i)], -FP8E4M3.max), FP8E4M3.max))
            }
            let expectedBack = FP8BlockKernelTests.bytes((0..<c.count).map { FP8E4M3.decode(expectedCodes[$0]) * stored[c.block(of: c.first + $0)] }, format)
            var codes = [UInt8](repeating: 0xAA, count: c.count), back = [UInt8](repeating: 0xAA, count: c.count * format.size)
            v.withUnsafeBufferPointer { v in
                forward.withUnsafeBufferPointer { f in
                    stored.withUnsafeBufferPointer { s in
                        codes.withUnsafeMutableBufferPointer { o in
                            back.withUnsafeMutableBytes {
                                FP8E4M3.quantize(v, first: c.first, grid: c.grid, forward: f, stored: s, codes: o, back: $0, format: format, using: isa)
                            }
                        }
                    }
                }
            }
            #expect(codes == expectedCodes, "\(c.testDescription)")
            #expect(back == expectedBack, "\(c.testDescription)")
        }
    }

    @Test("decode: decode(code)·scale rounded to the format, every code, bit for bit", arguments: InstructionSet.available, [FloatCodec.Format.f32, .f16, .bf16])
    func decode(isa: InstructionSet, format: FloatCodec.Format) {
        for c in FP8BlockKernelTests.cases {
            var g = SplitMix64(seed: UInt64(c.count))
            let codes = (0..<c.count).map { $0 < 256 ? UInt8($0) : UInt8(truncatingIfNeeded: g.next()) }
            // Scales of stored weights, and ones whose products overflow 16-bit formats or become subnormal.
            let scales: [Float] = (0..<c.blocks).map { [1, 0, 1e-4, 3e3, 1e-38, 0x1p-140, 7.5e-3][$0 % 7] }
            let expected = FP8BlockKernelTests.bytes((0..<c.count).map { FP8E4M3.decode(codes[$0]) * scales[c.block(of: c.first + $0)] }, format)
            var out = [UInt8](repeating: 0xAA, count: c.count * format.size)
            codes.withUnsafeBufferPointer { k in
                scales.withUnsafeBufferPointer { s in
                    out.withUnsafeMutableBytes { FP8E4M3.decode(k, first: c.first, grid: c.grid, scales: s, into: $0, format: format, using: isa) }
                }
            }
            #expect(out == expected, "\(c.testDescription)")
        }
    }

    @Test("differing counts the positions where two byte strings differ", arguments: [0, 1, 15, 16, 17, 4080, 4096, 70000])
    func differing(count: Int) {
        var g = SplitMix64(seed: UInt64(count))
        let a = (0..<count).map { _ in UInt8(truncatingIfNeeded: g.next()) }
        let b = a.map { g.next() % 3 == 0 ? $0 &+ 1 : $0 }
        let expected = zip(a, b).filter { $0 != $1 }.count
        let got = a.withUnsafeBufferPointer { a in b.withUnsafeBufferPointer { FP8E4M3.differing(a, $0) } }
        #expect(got == expected)
        #expect(a.withUnsafeBufferPointer { FP8E4M3.differing($0, $0) } == 0)
    }
}
