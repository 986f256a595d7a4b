import Foundation
import LoRAKernels
import Testing
@testable import LoRACore

/// FP8Block with only the per-value rules: its range methods are the protocol's defaults, which
/// walk the runs in Swift, the reference for FP8Block's kernels.
private struct PerValueFP8: BlockScaledFormat {
    let fp8 = FP8Block()
    var name: String { fp8.name }
    func value(of code: UInt8, scale: Float) -> Float { fp8.value(of: code, scale: scale) }
    func prepared(_ value: Float) -> Float { fp8.prepared(value) }
    func scales(amax: Float) -> (forward: Float, stored: Float) { fp8.scales(amax: amax) }
    func code(of value: Float, forward: Float) -> UInt8 { fp8.code(of: value, forward: forward) }
}

@Suite("FP8 block ranges")
struct FP8BlockRangeTests {
    @Test("FP8Block's range methods (C kernels) equal the per-value Swift rules on a weight with partial blocks",
          arguments: [FloatCodec.Format.f32, .f16, .bf16])
    func ranges(format: FloatCodec.Format) {
        let layout = BlockScaledLayout(shape: [300, 200], blockRows: 128, blockCols: 128, scaleName: "w_scale_inv")
        let blocks = layout.gridRows * layout.gridCols
        var g = SplitMix64(seed: 7)
        let edges: [Float] = [0, -0.0, 448, -448, 465, .infinity, -.infinity, .nan, 1e-40, 0x1p-9, 0x3p-10]
        let values: [Float] = (0..<(300 * 200)).map { i in
            i % 97 == 0 ? edges[i / 97 % edges.count] : Float(Int64(bitPattern: g.next()) >> 40) * 0x1p-30
        }
        let elements = 1234..<57_001, v = Array(values[elements])
        let fast = FP8Block(), slow = PerValueFP8()
        func absmax(_ f: any BlockScaledFormat) -> [Float] {
            var amax = [Float](repeating: 0, count: blocks)
            v.withUnsafeBufferPointer { v in amax.withUnsafeMutableBufferPointer { f.accumulateLargestMagnitudes(v, of: elements, layout: layout, into: $0) } }
            return amax
        }
        let amax = absmax(slow)
        #expect(absmax(fast).map(\.bitPattern) == amax.map(\.bitPattern))
        let forward = amax.map { fast.scales(amax: $0).forward }, stored = amax.map { fast.scales(amax: $0).stored }
        func quantize(_ f: any BlockScaledFormat) -> (codes: [UInt8], back: [UInt8], decoded: [UInt8]) {
            var codes = [UInt8](repeating: 0, count: v.count), back = [UInt8](repeating: 0, count: v.count * format.size), decoded = back
            v.withUnsafeBufferPointer { v in
                forward.withUnsafeBufferPointer { fw in
                    stored.withUnsafeBufferPointer { s in
                        codes.withUnsafeMutableBufferPointer { c in
                            back.withUnsafeMutableBytes { f.quantize(v, of: elements, layout: layout, forward: fw, stored: s, into: c, back: $0, format: format) }
                            decoded.withUnsafeMutableBytes { f.decode(UnsafeBufferPointer(c), of: elements, layout: layout, scales: s, into: $0, format: format) }
                        }
                    }
                }
            }
            return (codes, back, decoded)
        }
        let (a, b) = (quantize(fast), quantize(slow))
        #expect(a.codes == b.codes)
        #expect(a.back == b.back)
        #expect(a.decoded == b.decoded)
        #expect(a.back == a.decoded)
    }
}
