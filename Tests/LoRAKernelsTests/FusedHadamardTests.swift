import Testing
@testable import LoRAKernels

/// The fused LoHa kernel against a scalar statement of its contract: both rank-r sums by fused
/// multiply-adds in k order from 0, ((m1 · m2) · scale) · weight, + w, one rounding to the output
/// format. Bits must be equal on every instruction set this CPU runs, for every format pair, with
/// row and column tails; an overflow is flagged.
@Suite("Fused LoHa kernel")
struct FusedHadamardTests {
    static func expected(w: [Float], a1: [Float], b1: [Float], a2: [Float], b2: [Float], rows: Int, cols: Int, rank: Int,
                         scale: Float, weight: Float, output: FloatCodec.Format) -> [UInt8] {
        var y = [Float](repeating: 0, count: rows * cols)
        for i in 0..<rows {
            for j in 0..<cols {
                var m1: Float = 0, m2: Float = 0
                for k in 0..<rank {
                    m1 = m1.addingProduct(b1[i * rank + k], a1[k * cols + j])
                    m2 = m2.addingProduct(b2[i * rank + k], a2[k * cols + j])
                }
                y[i * cols + j] = w[i * cols + j] + ((m1 * m2) * scale) * weight
            }
        }
        return FusedMergeTests.encode(y, output)
    }

    static func run(_ isa: InstructionSet, w: [Float], input: FloatCodec.Format, output: FloatCodec.Format, a1: [Float], b1: [Float],
                    a2: [Float], b2: [Float], rows: Int, cols: Int, rank: Int, scale: Float, weight: Float) -> ([UInt8], FusedMerge.Outcome?) {
        let wBytes = FusedMergeTests.encode(w, input)
        var out = [UInt8](repeating: 0xA5, count: rows * cols * output.size)
        let outcome = wBytes.withUnsafeBytes { wb in
            out.withUnsafeMutableBytes { ob in
                a1.withUnsafeBufferPointer { a1p in
                    b1.withUnsafeBufferPointer { b1p in
                        a2.withUnsafeBufferPointer { a2p in
                            b2.withUnsafeBufferPointer { b2p in
                                FusedHadamard.rows(wb, input: input, into: ob, output: output, rows: rows, cols: cols, b1: b1p, a1: a1p, b2: b2p, a2: a2p,
                                                   rank: rank, leadingA: cols, scale: scale, weight: weight, using: isa)
                            }
                        }
                    }
                }
            }
        }
        return (out, outcome)
    }

    @Test("Bit-equal to the scalar contract for every format pair, shape and weight (1 and -1)",
          arguments: InstructionSet.available, [FloatCodec.Format.f32, .f16, .bf16])
    func matchesContract(isa: InstructionSet, input: FloatCodec.Format) {
        for output in FusedMergeTests.formats {
            for (n, shape) in FusedMergeTests.shapes.enumerated() {
                let (rows, cols, rank) = shape
                let w = FusedMergeTests.values(rows * cols, seed: UInt64(n), format: input)
                let a1 = FusedMergeTests.values(rank * cols, seed: UInt64(100 + n), format: .f32, scale: 0.3)
                let b1 = FusedMergeTests.values(rows * rank, seed: UInt64(200 + n), format: .f32, scale: 0.3)
                let a2 = FusedMergeTests.values(rank * cols, seed: UInt64(300 + n), format: .f32, scale: 0.3)
                let b2 = FusedMergeTests.values(rows * rank, seed: UInt64(400 + n), format: .f32, scale: 0.3)
                for (scale, weight): (Float, Float) in [(2, 1), (0.37, -1)] {
                    let (got, outcome) = Self.run(isa, w: w, input: input, output: output, a1: a1, b1: b1, a2: a2, b2: b2,
                                                  rows: rows, cols: cols, rank: rank, scale: scale, weight: weight)
                    #expect(outcome == FusedMerge.Outcome(resultNonFinite: false, inputNonFinite: false))
                    let want = Self.expected(w: w, a1: a1, b1: b1, a2: a2, b2: b2, rows: rows, cols: cols, rank: rank,
                                             scale: scale, weight: weight, output: output)
                    #expect(FusedMergeTests.differingBytes(got, want) == 0, "\(isa) \(input)→\(output) \(shape) s=\(scale) w=\(weight)")
                }
            }
        }
    }

    @Test("A product that overflows fp32 is flagged as a non-finite result, an inf input as such", arguments: InstructionSet.available)
    func overflow(isa: InstructionSet) {
        let (_, big) = Self.run(isa, w: [0, 0], input: .f32, output: .f32, a1: [1e30, 1], b1: [1e10], a2: [1e30, 1], b2: [1], rows: 1, cols: 2, rank: 1,
                                scale: 1, weight: 1)
        #expect(big == FusedMerge.Outcome(resultNonFinite: true, inputNonFinite: false))
        let (_, inf) = Self.run(isa, w: [.infinity, 0], input: .f32, output: .f32, a1: [1, 1], b1: [1], a2: [1, 1], b2: [1], rows: 1, cols: 2, rank: 1,
                                scale: 1, weight: 1)
        #expect(inf == FusedMerge.Outcome(resultNonFinite: true, inputNonFinite: true))
    }
}
