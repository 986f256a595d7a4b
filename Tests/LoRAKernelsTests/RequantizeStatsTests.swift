import Foundation
import Testing
@testable import LoRAKernels

@Suite("Requantize helper kernels")
struct RequantizeStatsTests {
    static func values(_ n: Int, seed: UInt64) -> [Float] {
        var rng = SplitMix64(seed: seed)
        return (0..<n).map { _ in Float(Double(rng.next() >> 11) * 0x1p-53 * 2 - 1) * 3 }
    }

    @Test("Block absmax equals max |x| per block, for whole and short last blocks", arguments: [(1000, 64), (4096, 64), (777, 128), (5, 64), (64, 1)])
    func blockAbsmax(count: Int, blocksize: Int) {
        var x = RequantizeStatsTests.values(count, seed: UInt64(count))
        if count > 10 { x[3] = -7.5; x[count - 1] = 0 }
        let blocks = (count + blocksize - 1) / blocksize
        var got = [Float](repeating: -1, count: blocks)
        x.withUnsafeBufferPointer { v in got.withUnsafeMutableBufferPointer { Bnb4bit.blockAbsmax(v, blocksize: blocksize, into: $0) } }
        let expected = (0..<blocks).map { b in x[(b * blocksize)..<min(count, (b + 1) * blocksize)].reduce(Float(0)) { max($0, abs($1)) } }
        #expect(got == expected)
    }

    @Test("Delta sums equal four fp64 lanes by index mod 4 added (0+1)+(2+3), for every storage format",
          arguments: [(FloatCodec.Format.bf16, 4099), (.f16, 1030), (.f32, 3), (.bf16, 8)])
    func deltaSums(format: FloatCodec.Format, count: Int) {
        let t = RequantizeStatsTests.values(count, seed: 1)
        let o = RequantizeStatsTests.values(count, seed: 2).map { FloatCodec.roundTrip($0, format: format) }
        let g = RequantizeStatsTests.values(count, seed: 3).map { FloatCodec.roundTrip($0, format: format) }
        func bytes(_ v: [Float]) -> [UInt8] {
            var b = [UInt8](repeating: 0, count: v.count * format.size)
            v.withUnsafeBufferPointer { src in b.withUnsafeMutableBytes { FloatCodec.encode(src, format: format, into: $0) } }
            return b
        }
        let ob = bytes(o), gb = bytes(g)
        let got = t.withUnsafeBufferPointer { tp in ob.withUnsafeBytes { op in gb.withUnsafeBytes { Bnb4bit.deltaSums(target: tp, old: op, back: $0, format: format) } } }
        var d = [Double](repeating: 0, count: 4), w = d, q = d
        let whole = count / 4 * 4
        for k in 0..<count {
            let lane = k < whole ? k % 4 : 0
            let a = Double(t[k]) - Double(o[k]), b = Double(g[k]) - Double(o[k])
            d[lane] += a * b
            w[lane] += a * a
            q[lane] += b * b
        }
        #expect(got.dot == (d[0] + d[1]) + (d[2] + d[3]))
        #expect(got.want == (w[0] + w[1]) + (w[2] + w[3]))
        #expect(got.got == (q[0] + q[1]) + (q[2] + q[3]))
    }
}
