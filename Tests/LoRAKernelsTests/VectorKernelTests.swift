import Testing
@testable import LoRAKernels

/// The fused kernel against a scalar statement of its contract: Σₖ by fused multiply-adds in k order
/// from 0, × coefficient, + w, one rounding to the output format. Bits must be equal, on every
/// instruction set this CPU runs, for every format pair, with row and column tails.
@Suite("Fused merge kernel")
struct FusedMergeTests {
    static let formats: [FloatCodec.Format] = [.f32, .f16, .bf16]
    static let shapes: [(rows: Int, cols: Int, rank: Int)] = [(1, 1, 1), (3, 17, 2), (4, 16, 16), (9, 40, 3), (5, 100, 8), (8, 33, 64)]

    /// Values of `format` (exactly representable), deterministic.
    static func values(_ n: Int, seed: UInt64, format: FloatCodec.Format, scale: Float = 1) -> [Float] {
        var rng = SplitMix64(seed: seed)
        return (0..<n).map { _ in FloatCodec.roundTrip((Float(rng.next() % 2_000_001) / 1_000_000 - 1) * scale, format: format) }
    }

    static func encode(_ v: [Float], _ format: FloatCodec.Format) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: v.count * format.size)
        v.withUnsafeBufferPointer { src in bytes.withUnsafeMutableBytes { FloatCodec.encode(src, format: format, into: $0) } }
        return bytes
    }

    /// Positions where two byte arrays differ (a count keeps failure messages short).
    static func differingBytes(_ x: [UInt8], _ y: [UInt8]) -> Int {
        x.count == y.count ? zip(x, y).filter { $0 != $1 }.count : max(x.count, y.count)
    }

    /// The contract, one element at a time.
    static func expected(w: [Float], a: [Float], b: [Float], rows: Int, cols: Int, rank: Int, coefficient: Float, output: FloatCodec.Format) -> [UInt8] {
        var y = [Float](repeating: 0, count: rows * cols)
        for i in 0..<rows {
            for j in 0..<cols {
                var acc: Float = 0
                for k in 0..<rank { acc = acc.addingProduct(b[i * rank + k], a[k * cols + j]) }
                let delta = acc * coefficient
                y[i * cols + j] = w[i * cols + j] + delta
            }
        }
        return encode(y, output)
    }

    static func run(_ isa: InstructionSet, w: [Float], input: FloatCodec.Format, output: FloatCodec.Format,
                    a: [Float], b: [Float], rows: Int, cols: Int, rank: Int, coefficient: Float, misalign: Int = 0) -> ([UInt8], FusedMerge.Outcome?) {
        // `misalign` shifts w by that many bytes: stored tensors need not be aligned.
        let wBytes = [UInt8](repeating: 0, count: misalign) + encode(w, input)
        var out = [UInt8](repeating: 0xA5, count: rows * cols * output.size)
        let outcome = wBytes.withUnsafeBytes { wb in
            out.withUnsafeMutableBytes { ob in
                a.withUnsafeBufferPointer { ap in
                    b.withUnsafeBufferPointer { bp in
                        FusedMerge.rows(UnsafeRawBufferPointer(rebasing: wb[misalign...]), input: input, into: ob, output: output,
                                        rows: rows, cols: cols, b: bp, rank: rank, a: ap, leadingA: cols,
                                        coefficient: coefficient, using: isa)
                    }
                }
            }
        }
        return (out, outcome)
    }

    @Test("Bit-equal to the scalar contract for every format pair and shape",
          arguments: InstructionSet.available, [FloatCodec.Format.f32, .f16, .bf16])
    func matchesContract(isa: InstructionSet, input: FloatCodec.Format) {
        for output in FusedMergeTests.formats {
            for (n, shape) in FusedMergeTests.shapes.enumerated() {
                let (rows, cols, rank) = shape
                let w = FusedMergeTests.values(rows * cols, seed: UInt64(n), format: input)
                let a = FusedMergeTests.values(rank * cols, seed: UInt64(100 + n), format: .f32, scale: 0.05)
                let b = FusedMergeTests.values(rows * rank, seed: UInt64(200 + n), format: .f32, scale: 0.05)
                for coefficient: Float in [2, 0.37] {
                    let (got, outcome) = FusedMergeTests.run(isa, w: w, input: input, output: output, a: a, b: b,
                                                             rows: rows, cols: cols, rank: rank, coefficient: coefficient, misalign: n % 2 == 1 ? 2 : 0)
                    #expect(outcome == FusedMerge.Outcome(resultNonFinite: false, inputNonFinite: false))
                    let want = FusedMergeTests.expected(w: w, a: a, b: b, rows: rows, cols: cols, rank: rank, coefficient: coefficient, output: output)
                    #expect(FusedMergeTests.differingBytes(got, want) == 0, "\(isa) \(input)→\(output) \(shape) c=\(coefficient)")
                }
            }
        }
    }

    @Test("Specials: ±0, subnormals, overflow to inf, NaN and inf inputs are flagged", arguments: InstructionSet.available)
    func specials(isa: InstructionSet) {
        // One row of 20 (a full vector and a tail), rank 1, b = 1, coefficient 1: y = w + a.
        let tiny = Float(bitPattern: 0x0000_0100)  // f32 subnormal: bf16 keeps it (0x0001), f16 flushes it to 0
        var w = [Float](repeating: 0, count: 20), a = [Float](repeating: 0, count: 20)
        w[0] = -0.0; a[0] = -0.0                      // -0 + -0 = -0
        w[1] = tiny; a[1] = 0                         // a subnormal survives
        w[2] = Float(bitPattern: 0x0003_8000); a[2] = 0  // bf16 tie on a subnormal: even
        w[17] = 1; a[17] = 0x1p-9                     // in the tail: bf16 tie, rounds to even (1)
        w[18] = -2; a[18] = -0x1p-7 * 1.5             // rounds away
        for output in FusedMergeTests.formats {
            let (got, outcome) = FusedMergeTests.run(isa, w: w, input: .f32, output: output, a: a, b: [1], rows: 1, cols: 20, rank: 1, coefficient: 1)
            #expect(outcome == FusedMerge.Outcome(resultNonFinite: false, inputNonFinite: false))
            #expect(got == FusedMergeTests.expected(w: w, a: a, b: [1], rows: 1, cols: 20, rank: 1, coefficient: 1, output: output), "\(output)")
        }
        // Overflow: finite inputs, infinite result.
        var big = [Float](repeating: 1, count: 20)
        big[19] = Float.greatestFiniteMagnitude
        let (_, overflow) = FusedMergeTests.run(isa, w: big, input: .f32, output: .f32, a: big, b: [1], rows: 1, cols: 20, rank: 1, coefficient: 1)
        #expect(overflow == FusedMerge.Outcome(resultNonFinite: true, inputNonFinite: false))
        // NaN in the input (in the tail), kept a quiet NaN in every output format.
        var withNaN = [Float](repeating: 0.5, count: 20)
        withNaN[18] = .nan
        for output in FusedMergeTests.formats {
            let (got, outcome) = FusedMergeTests.run(isa, w: withNaN, input: .f32, output: output, a: [Float](repeating: 0, count: 20), b: [1],
                                                     rows: 1, cols: 20, rank: 1, coefficient: 1)
            #expect(outcome == FusedMerge.Outcome(resultNonFinite: true, inputNonFinite: true))
            var back = [Float](repeating: 0, count: 20)
            got.withUnsafeBytes { raw in back.withUnsafeMutableBufferPointer { FloatCodec.decode(raw, format: output, into: $0) } }
            #expect(back[18].isNaN && back[17] == 0.5)
        }
    }

    @Test("A column range of one row (a partial row) equals those columns of the full row", arguments: InstructionSet.available)
    func partialRow(isa: InstructionSet) {
        let cols = 50, rank = 4
        let w = FusedMergeTests.values(cols, seed: 7, format: .bf16)
        let a = FusedMergeTests.values(rank * cols, seed: 8, format: .f32, scale: 0.1)
        let b = FusedMergeTests.values(rank, seed: 9, format: .f32, scale: 0.1)
        let full = FusedMergeTests.expected(w: w, a: a, b: b, rows: 1, cols: cols, rank: rank, coefficient: 0.5, output: .bf16)
        let wBytes = FusedMergeTests.encode(w, .bf16)
        for (c0, c1) in [(0, 13), (13, 50), (5, 37), (49, 50)] {
            var out = [UInt8](repeating: 0, count: (c1 - c0) * 2)
            let outcome = wBytes.withUnsafeBytes { wb in
                out.withUnsafeMutableBytes { ob in
                    a.withUnsafeBufferPointer { ap in
                        b.withUnsafeBufferPointer { bp in
                            FusedMerge.rows(UnsafeRawBufferPointer(rebasing: wb[(2 * c0)...]), input: .bf16, into: ob, output: .bf16,
                                            rows: 1, cols: c1 - c0, b: bp, rank: rank,
                                            a: UnsafeBufferPointer(rebasing: ap[c0...]), leadingA: cols, coefficient: 0.5, using: isa)
                        }
                    }
                }
            }
            #expect(outcome != nil)
            #expect(out == Array(full[(2 * c0)..<(2 * c1)]), "columns \(c0)..<\(c1)")
        }
    }
}

/// Verify's probe kernel against plain fp64 sums, and across instruction sets bit for bit.
@Suite("Merge kernel rounding across instruction sets")
struct KernelRoundingTests {
    /// Every f16 and bf16 value, the midpoints between neighbours (ties) and the floats one ulp on
    /// either side of them, NaNs, infinities, overflow and subnormal boundaries: with rank 0 the
    /// kernel only rounds w, so this compares the scalar path's integer rounding with F16C / AVX-512.
    static func boundaryValues() -> [Float] {
        var v: [Float] = [0, -0, .infinity, -.infinity, .nan, Float(bitPattern: 0x7FA0_0001), Float(bitPattern: 0xFFC0_1234),
                          65504, 65519.99, 65520, 65536, -65520, 0x1p-24, 0x1p-25, 0x1.8p-25, 0x1p-26, 0x1p-14, 0x1.ff8p-15]
        for h in UInt16(0)...UInt16(0x7BFF) {
            let x = Float(Float16(bitPattern: h)), next = Float(Float16(bitPattern: h + 1))
            let mid = (x + next) / 2
            v += [x, mid, mid.nextUp, mid.nextDown, -mid]
        }
        for top in stride(from: UInt32(0), to: 0x7F80, by: 7) {
            let tie = Float(bitPattern: (top << 16) | 0x8000)
            v += [tie, tie.nextUp, tie.nextDown, Float(bitPattern: ((top + 1) << 16) | 0x8000), -tie]
        }
        return v
    }

    @Test("Scalar, AVX2 and AVX-512 round every f16/bf16 boundary, NaN and subnormal to the same bits")
    func sameRounding() {
        let w = KernelRoundingTests.boundaryValues()
        for input in [FloatCodec.Format.f32] {
            for output in FusedMergeTests.formats {
                let outputs = InstructionSet.available.map {
                    FusedMergeTests.run($0, w: w, input: input, output: output, a: [], b: [], rows: 1, cols: w.count, rank: 0, coefficient: 1).0
                }
                for (isa, o) in zip(InstructionSet.available, outputs).dropFirst() {
                    #expect(FusedMergeTests.differingBytes(o, outputs[0]) == 0, "\(isa) vs scalar, \(output)")
                }
            }
        }
        // Widening every f16 and bf16 bit pattern: the scalar path's decoder against the vector paths'.
        let all16 = (0...UInt16.max).map { $0 }
        for input in [FloatCodec.Format.f16, .bf16] {
            let bytes = all16.flatMap { [UInt8($0 & 0xFF), UInt8($0 >> 8)] }
            let w = bytes.withUnsafeBytes { raw in
                [Float](unsafeUninitializedCapacity: all16.count) { buffer, n in
                    FloatCodec.decode(raw, format: input, into: buffer)
                    n = all16.count
                }
            }
            let outputs = InstructionSet.available.map {
                FusedMergeTests.run($0, w: w, input: input, output: .f32, a: [], b: [], rows: 1, cols: w.count, rank: 0, coefficient: 1).0
            }
            for (isa, o) in zip(InstructionSet.available, outputs).dropFirst() {
                #expect(FusedMergeTests.differingBytes(o, outputs[0]) == 0, "\(isa) vs scalar, widening \(input)")
            }
        }
    }
}

@Suite("Probe products kernel")
struct ProbeKernelTests {
    @Test("Differences, base products and norms equal fp64 sums; both instruction sets agree exactly",
          arguments: [(1, 1), (3, 17), (5, 64), (7, 100), (2, 2051)], [FloatCodec.Format.bf16, .f16, .f32])
    func probes(shape: (rows: Int, cols: Int), format: FloatCodec.Format) throws {
        let (rows, cols) = shape
        let w = FusedMergeTests.values(rows * cols, seed: 11, format: format)
        let m = zip(w, FusedMergeTests.values(rows * cols, seed: 12, format: .f32, scale: 0.01)).map { FloatCodec.roundTrip($0 + $1, format: format) }
        let x = (0..<(cols * 8)).map { Double(($0 * 7919) % 2001) / 1000 - 1 }  // input i, probe p at [i*8+p]
        let wb = FusedMergeTests.encode(w, format), mb = FusedMergeTests.encode(m, format)
        var results: [ProbeProducts.Products] = []
        for isa in InstructionSet.available where isa != .scalar {
            let r = try wb.withUnsafeBytes { wp in
                try mb.withUnsafeBytes { mp in
                    try ProbeProducts.vectorKernel(rows: rows, cols: cols, base: wp, baseFormat: format, merged: mp, mergedFormat: format,
                                                   x: x, release: nil, instructionSet: isa)
                }
            }
            results.append(try #require(r))
        }
        for r in results.dropFirst() {
            #expect(r.difference == results[0].difference && r.base == results[0].base && r.outputNorms == results[0].outputNorms)
        }
        let got = try #require(results.first)
        for o in 0..<rows {
            var norm = 0.0
            for i in 0..<cols { norm += Double(w[o * cols + i]) * Double(w[o * cols + i]) }
            #expect(abs(Double(got.outputNorms[o]) - norm.squareRoot()) <= 1e-6 * norm.squareRoot())
            for p in 0..<8 {
                var d = 0.0, y = 0.0, scale = 0.0
                for i in 0..<cols {
                    d += (Double(m[o * cols + i]) - Double(w[o * cols + i])) * x[i * 8 + p]
                    y += Double(w[o * cols + i]) * x[i * 8 + p]
                    scale += abs(Double(w[o * cols + i]) * x[i * 8 + p]) + abs(Double(m[o * cols + i]) * x[i * 8 + p])
                }
                #expect(abs(got.difference[o * 8 + p] - d) <= 1e-13 * max(scale, 1e-300))
                #expect(abs(got.base[o * 8 + p] - y) <= 1e-13 * max(scale, 1e-300))
            }
        }
    }
}

/// extract's ΔW kernel against the scalar loop: identical differences, sums equal to rounding.
@Suite("Weight difference kernel")
struct WeightDifferenceTests {
    @Test("Differences equal the scalar fp32 subtraction; sums of squares agree",
          arguments: InstructionSet.available, [(FloatCodec.Format.bf16, FloatCodec.Format.bf16), (.f32, .bf16), (.f16, .f32)])
    func difference(isa: InstructionSet, formats: (tuned: FloatCodec.Format, base: FloatCodec.Format)) {
        for n in [1, 15, 16, 17, 1000] {
            let t = FusedMergeTests.values(n, seed: 21, format: formats.tuned), b = FusedMergeTests.values(n, seed: 22, format: formats.base)
            let tb = FusedMergeTests.encode(t, formats.tuned), bb = FusedMergeTests.encode(b, formats.base)
            var got = [Float](repeating: .nan, count: n), want = got
            let sums = tb.withUnsafeBytes { tp in bb.withUnsafeBytes { bp in got.withUnsafeMutableBufferPointer {
                WeightDifference.compute(tuned: tp, tunedFormat: formats.tuned, base: bp, baseFormat: formats.base, into: $0, using: isa)
            } } }
            let reference = tb.withUnsafeBytes { tp in bb.withUnsafeBytes { bp in want.withUnsafeMutableBufferPointer {
                WeightDifference.scalar(tuned: tp, tunedFormat: formats.tuned, base: bp, baseFormat: formats.base, into: $0)
            } } }
            #expect(got == want, "n = \(n)")
            #expect(abs(sums.deltaSquares - reference.deltaSquares) <= 1e-12 * reference.deltaSquares)
            #expect(abs(sums.baseSquares - reference.baseSquares) <= 1e-12 * reference.baseSquares)
            #expect(got == zip(t, b).map { $0 - $1 })
        }
    }
}
