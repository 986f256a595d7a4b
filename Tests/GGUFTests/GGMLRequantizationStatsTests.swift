import GGUF
import Testing

@Suite("Requantization statistics")
struct GGMLRequantizationStatsTests {
    @Test("error and delta sums on a worked example; two halves add up to the whole")
    func workedExample() {
        let base: [Float] = [0, 0, 1, 1], target: [Float] = [1, 2, 1, 3], stored: [Float] = [1, 1, 1, 1]
        var whole = GGMLRequantizationStats()
        base.withUnsafeBufferPointer { b in target.withUnsafeBufferPointer { t in stored.withUnsafeBufferPointer { whole.add(base: b, target: t, stored: $0) } } }
        // errors 0, −1, 0, −2; intended delta 1, 2, 0, 2; stored delta 1, 1, 0, 0
        #expect(whole.count == 4)
        #expect(whole.squaredError == 5 && whole.maxAbsError == 2)
        #expect(abs(whole.rmsError - (5.0 / 4).squareRoot()) < 1e-15)
        #expect(abs(whole.relativeError - (5.0 / 15).squareRoot()) < 1e-15)
        #expect(abs(whole.deltaKept - 3.0 / 9) < 1e-15)
        #expect(abs(whole.deltaCorrelation - 3.0 / (9.0 * 2).squareRoot()) < 1e-15)
        var halves = GGMLRequantizationStats()
        for r in [0..<2, 2..<4] {
            var part = GGMLRequantizationStats()
            base[r].withUnsafeBufferPointer { b in target[r].withUnsafeBufferPointer { t in stored[r].withUnsafeBufferPointer { part.add(base: b, target: t, stored: $0) } } }
            halves.merge(part)
        }
        #expect(halves == whole)
    }

    /// A Q8_0 base plus a delta of `scale` / 2 quantization steps, requantized: a delta of several
    /// steps survives, one far below a step is rounded away.
    @Test("on a requantized Q8_0 tensor a large delta is kept and a tiny one is lost", arguments: [(8.0, 0.95, 1.05), (0.01, -0.05, 0.05)])
    func requantizedDelta(scale: Double, low: Double, high: Double) throws {
        let x = Array(try CodecFixture().floats("input")[0..<512])
        let base = try x.withUnsafeBufferPointer { xs in
            try GGMLQuantizer.quantize(xs, type: .q8_0).withUnsafeBytes { try GGMLDequantizer.dequantize($0, type: .q8_0) }
        }
        // ±scale/2 quantization steps (the block's max|x| / 127), alternating in sign.
        let target = base.enumerated().map { i, b -> Float in
            let block = base[i / 32 * 32..<i / 32 * 32 + 32].map(abs).max() ?? 0
            return b + block / 127 * Float(scale / 2) * (i % 2 == 0 ? 1 : -1)
        }
        let stored = try target.withUnsafeBufferPointer { t in
            try GGMLQuantizer.quantize(t, type: .q8_0).withUnsafeBytes { try GGMLDequantizer.dequantize($0, type: .q8_0) }
        }
        var stats = GGMLRequantizationStats()
        base.withUnsafeBufferPointer { b in target.withUnsafeBufferPointer { t in stored.withUnsafeBufferPointer { stats.add(base: b, target: t, stored: $0) } } }
        #expect(stats.deltaKept > low && stats.deltaKept < high, "\(stats.deltaKept)")
    }

    @Test("no intended change and no values give zeros, not NaN")
    func empty() {
        let s = GGMLRequantizationStats()
        #expect(s.rmsError == 0 && s.relativeError == 0 && s.deltaKept == 0 && s.deltaCorrelation == 0)
    }
}
