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

    @Test("no intended change and no values give zeros, not NaN")
    func empty() {
        let s = GGMLRequantizationStats()
        #expect(s.rmsError == 0 && s.relativeError == 0 && s.deltaKept == 0 && s.deltaCorrelation == 0)
    }
}
