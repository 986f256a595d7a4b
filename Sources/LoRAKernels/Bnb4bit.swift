import CKernels

/// bitsandbytes 4-bit (NF4 / FP4) blockwise codes, decoded and encoded by C kernels (portable C,
/// and AVX2 table lookups picked at run time), bit-exact with bitsandbytes and with the reference
/// Swift loops the tests keep as the reference (checked against bitsandbytes' own outputs).
///
/// Layout, as transformers serializes a 4-bit weight: the flattened weight's element `i` has its
/// 4-bit code in byte `i / 2` of the packed codes, in the **high** nibble when `i` is even and the
/// **low** nibble when `i` is odd, and belongs to block `i / blocksize`, whose fp32 scale is
/// `absmax[i / blocksize]`. The value of code `c` is `quantMap[c]` (16 values in [-1, 1]).
/// With double quantization the scales are themselves stored as 8-bit codes (see `resolveAbsmax`).
///
/// Rounding: every product is one fp32 multiply (one rounding) and every fp32 add one more; no
/// multiply and add are ever fused. Outputs narrower than fp32 are rounded once, to nearest with
/// ties to even (NaN stays a quiet NaN, F16/BF16 subnormals are kept), as `FloatCodec.encode`.
/// Every instruction set gives the same bytes.
public enum Bnb4bit {

    // MARK: - Code tables

    /// bitsandbytes' NF4 code values (`quant_map` of every NF4 weight), in code order; ascending.
    public static let nf4Map: [Float] = [
        0xBF80_0000, 0xBF32_39B1, 0xBF06_6B30, 0xBECA_32A0, 0xBE91_A24D, 0xBE3D_353F, 0xBDBA_7871, 0x0000_0000,
        0x3DA2_FAFF, 0x3E24_CAE3, 0x3E7C_04DD, 0x3EAD_033A, 0x3EE1_A4B8, 0x3F10_07AB, 0x3F39_13B3, 0x3F80_0000,
    ].map { Float(bitPattern: $0) }

    /// bitsandbytes' FP4 code values (`quant_map` of every FP4 weight), in code order (codes 0 and 8
    /// are both +0; the order is not sorted).
    public static let fp4Map: [Float] = [
        0x0000_0000, 0x3BAA_AAAB, 0x3F2A_AAAB, 0x3F80_0000, 0x3EAA_AAAB, 0x3F00_0000, 0x3E2A_AAAB, 0x3E80_0000,
        0x0000_0000, 0xBBAA_AAAB, 0xBF2A_AAAB, 0xBF80_0000, 0xBEAA_AAAB, 0xBF00_0000, 0xBE2A_AAAB, 0xBE80_0000,
    ].map { Float(bitPattern: $0) }

    /// The 256 values of the nested (double-quantization) code, bitsandbytes'
    /// `create_dynamic_map(signed=True)` as transformers stores it in `nested_quant_map`; ascending.
    public static let nestedMap: [Float] = [
        0xBF7E_3333, 0xBF7A_999A, 0xBF77_0000, 0xBF73_6666, 0xBF6F_CCCD, 0xBF6C_3333, 0xBF68_999A, 0xBF65_0000,
        0xBF61_6666, 0xBF5D_CCCD, 0xBF5A_3333, 0xBF56_999A, 0xBF53_0000, 0xBF4F_6666, 0xBF4B_CCCD, 0xBF48_3333,
        0xBF44_999A, 0xBF41_0000, 0xBF3D_6666, 0xBF39_CCCD, 0xBF36_3334, 0xBF32_999A, 0xBF2F_0000, 0xBF2B_6666,
        0xBF27_CCCD, 0xBF24_3334, 0xBF20_999A, 0xBF1D_0000, 0xBF19_6666, 0xBF15_CCCD, 0xBF12_3334, 0xBF0E_999A,
        0xBF0B_0000, 0xBF07_6666, 0xBF03_CCCC, 0xBF00_3333, 0xBEF9_3332, 0xBEF2_0000, 0xBEEA_CCCC, 0xBEE3_999A,
        0xBEDC_6666, 0xBED5_3333, 0xBECE_0000, 0xBEC6_CCCC, 0xBEBF_999A, 0xBEB8_6666, 0xBEB1_3333, 0xBEAA_0000,
        0xBEA2_CCCC, 0xBE9B_999A, 0xBE94_6666, 0xBE8D_3334, 0xBE86_0000, 0xBE7D_9999, 0xBE6F_3333, 0xBE60_CCCD,
        0xBE52_6666, 0xBE44_0000, 0xBE35_999A, 0xBE27_3333, 0xBE18_CCCD, 0xBE0A_6666, 0xBDF8_0000, 0xBDDB_3334,
        0xBDC9_EB85, 0xBDC4_28F7, 0xBDBE_6667, 0xBDB8_A3D7, 0xBDB2_E148, 0xBDAD_1EB8, 0xBDA7_5C2A, 0xBDA1_999A,
        0xBD9B_D70A, 0xBD96_147B, 0xBD90_51EB, 0xBD8A_8F5D, 0xBD84_CCCD, 0xBD7E_147B, 0xBD72_8F5D, 0xBD67_0A3D,
        0xBD5B_851F, 0xBD50_0000, 0xBD44_7AE1, 0xBD38_F5C3, 0xBD2D_70A3, 0xBD21_EB85, 0xBD16_6667, 0xBD0A_E148,
        0xBCFE_B852, 0xBCE7_AE15, 0xBCD0_A3D7, 0xBCB9_999A, 0xBCA2_8F5D, 0xBC8B_851F, 0xBC68_F5C3, 0xBC3A_E148,
        0xBC1F_3B64, 0xBC16_0418, 0xBC0C_CCCD, 0xBC03_9581, 0xBBF4_BC6A, 0xBBE2_4DD3, 0xBBCF_DF3B, 0xBBBD_70A4,
        0xBBAB_020D, 0xBB98_9374, 0xBB86_24DD, 0xBB67_6C8A, 0xBB42_8F5C, 0xBB1D_B22D, 0xBAF1_A9FC, 0xBAA7_EF9D,
        0xBA77_65FF, 0xBA59_E83E, 0xBA3C_6A80, 0xBA1E_ECC1, 0xBA01_6F01, 0xB9C7_E283, 0xB98C_E705, 0xB923_D70B,
        0xB8BA_1F4B, 0xB88A_EFB3, 0xB837_8034, 0xB7B2_4206, 0xB702_05FF, 0xB65A_1A94, 0xB513_A3B7, 0x0000_0000,
        0x3513_A3B7, 0x365A_1A94, 0x3702_05FF, 0x37B2_4206, 0x3837_8034, 0x388A_EFB3, 0x38BA_1F4B, 0x3923_D70B,
        0x398C_E705, 0x39C7_E283, 0x3A01_6F01, 0x3A1E_ECC1, 0x3A3C_6A80, 0x3A59_E83E, 0x3A77_65FF, 0x3AA7_EF9D,
        0x3AF1_A9FC, 0x3B1D_B22D, 0x3B42_8F5C, 0x3B67_6C8A, 0x3B86_24DD, 0x3B98_9374, 0x3BAB_020D, 0x3BBD_70A4,
        0x3BCF_DF3B, 0x3BE2_4DD3, 0x3BF4_BC6A, 0x3C03_9581, 0x3C0C_CCCD, 0x3C16_0418, 0x3C1F_3B64, 0x3C3A_E148,
        0x3C68_F5C3, 0x3C8B_851F, 0x3CA2_8F5D, 0x3CB9_999A, 0x3CD0_A3D7, 0x3CE7_AE15, 0x3CFE_B852, 0x3D0A_E148,
        0x3D16_6667, 0x3D21_EB85, 0x3D2D_70A3, 0x3D38_F5C3, 0x3D44_7AE1, 0x3D50_0000, 0x3D5B_851F, 0x3D67_0A3D,
        0x3D72_8F5D, 0x3D7E_147B, 0x3D84_CCCD, 0x3D8A_8F5D, 0x3D90_51EB, 0x3D96_147B, 0x3D9B_D70A, 0x3DA1_999A,
        0x3DA7_5C2A, 0x3DAD_1EB8, 0x3DB2_E148, 0x3DB8_A3D7, 0x3DBE_6667, 0x3DC4_28F7, 0x3DC9_EB85, 0x3DDB_3334,
        0x3DF8_0000, 0x3E0A_6666, 0x3E18_CCCD, 0x3E27_3333, 0x3E35_999A, 0x3E44_0000, 0x3E52_6666, 0x3E60_CCCD,
        0x3E6F_3333, 0x3E7D_9999, 0x3E86_0000, 0x3E8D_3334, 0x3E94_6666, 0x3E9B_999A, 0x3EA2_CCCC, 0x3EAA_0000,
        0x3EB1_3333, 0x3EB8_6666, 0x3EBF_999A, 0x3EC6_CCCC, 0x3ECE_0000, 0x3ED5_3333, 0x3EDC_6666, 0x3EE3_999A,
        0x3EEA_CCCC, 0x3EF2_0000, 0x3EF9_3332, 0x3F00_3333, 0x3F03_CCCC, 0x3F07_6666, 0x3F0B_0000, 0x3F0E_999A,
        0x3F12_3334, 0x3F15_CCCD, 0x3F19_6666, 0x3F1D_0000, 0x3F20_999A, 0x3F24_3334, 0x3F27_CCCD, 0x3F2B_6666,
        0x3F2F_0000, 0x3F32_999A, 0x3F36_3334, 0x3F39_CCCD, 0x3F3D_6666, 0x3F41_0000, 0x3F44_999A, 0x3F48_3333,
        0x3F4B_CCCD, 0x3F4F_6666, 0x3F53_0000, 0x3F56_999A, 0x3F5A_3333, 0x3F5D_CCCD, 0x3F61_6666, 0x3F65_0000,
        0x3F68_999A, 0x3F6C_3333, 0x3F6F_CCCD, 0x3F73_6666, 0x3F77_0000, 0x3F7A_999A, 0x3F7E_3333, 0x3F80_0000
    ].map { Float(bitPattern: $0) }

    /// The block size of the nested absmax quantization bitsandbytes uses (`nested_blocksize`).
    public static let nestedBlocksize = 256

    // MARK: - Bucketing

    /// The search tables of quantization over `code`: `bounds` are the `code.count − 1` midpoints
    /// `(v[k] + v[k+1]) / 2` (fp32) of the code values sorted ascending (ties kept in index order),
    /// and `order[k]` is the code index of the k-th smallest value. A scaled value's code is
    /// `order[number of bounds < value]`, i.e. `torch.bucketize(value, bounds, right=False)` mapped
    /// back to code indices, as bitsandbytes' CPU quantization does it.
    /// - Parameter code: code values (16 for a 4-bit map, 256 for the nested map), none NaN.
    /// - Returns: bounds (non-decreasing) and order (a permutation of the code indices).
    public static func bucketizer(code: [Float]) -> (bounds: [Float], order: [UInt8]) {
        precondition(!code.isEmpty && code.count <= 256 && !code.contains(where: \.isNaN), "1 to 256 code values, none NaN")
        let order = code.indices.sorted { code[$0] < code[$1] || (code[$0] == code[$1] && $0 < $1) }
        let bounds = (0..<(order.count - 1)).map { (code[order[$0]] + code[order[$0 + 1]]) / 2 }
        return (bounds, order.map { UInt8($0) })
    }

    // MARK: - Decoding

    /// Decodes elements `elements` of a 4-bit weight into `elements.count` values of `format`:
    ///
    ///     out[i − elements.lowerBound] = round_format( quantMap[code(i)] · absmax[i / blocksize] )
    ///
    /// the product in fp32 (one rounding), rounded once to `format` (nearest even). Writing in the
    /// weight's stored dtype gives the bytes of bitsandbytes' `dequantize_4bit` (and of
    /// `FloatCodec.roundTrip(q · absmax, format:)`, LoRACore's reference).
    /// - Parameters:
    ///   - packed: the whole weight's packed codes (byte `i / 2` holds element `i`; high nibble first).
    ///   - elements: the range of flattened element indices to decode (any start, any length).
    ///   - absmax: the whole weight's fp32 block scales, by absolute block number (already resolved
    ///     from nested codes by `resolveAbsmax` for double-quantized weights).
    ///   - blocksize: elements per block (> 0).
    ///   - quantMap: the 16 code values (`X.weight.quant_map`).
    ///   - out: destination, little-endian `format` elements, any alignment.
    ///   - format: output format (f32, f16, bf16).
    ///   - isa: instruction set; nil uses `Kernels.instructionSet()` (or the best when that fails).
    public static func decode(
        _ packed: UnsafeRawBufferPointer, elements: Range<Int>,
        absmax: UnsafeBufferPointer<Float>, blocksize: Int, quantMap: [Float],
        into out: UnsafeMutableRawBufferPointer, format: FloatCodec.Format,
        using isa: InstructionSet? = nil
    ) {
        precondition(elements.lowerBound >= 0 && blocksize > 0 && quantMap.count == 16, "a valid range, blocksize and 16 code values")
        let n = elements.count
        guard n > 0 else { return }
        precondition(packed.count >= (elements.upperBound + 1) / 2, "packed holds the elements' codes")
        precondition(absmax.count > (elements.upperBound - 1) / blocksize, "absmax holds the elements' blocks")
        precondition(out.count >= n * format.size, "out holds the decoded elements")
        let isa = Kernels.resolved(isa)
        let status = quantMap.withUnsafeBufferPointer { q in
            lora_bnb4_decode_isa(isa.rawValue, packed.baseAddress!.assumingMemoryBound(to: UInt8.self), elements.lowerBound, n,
                                 absmax.baseAddress, blocksize, q.baseAddress, FusedMerge.code(format), out.baseAddress)
        }
        precondition(status == 0, "instruction set \(isa) runs on this CPU")
    }

    /// Resolves double-quantized block scales for blocks `blocks`:
    ///
    ///     out[j] = (nestedMap[codes[b]] · nestedAbsmax[b / nestedBlocksize]) + offset,  b = blocks.lowerBound + j
    ///
    /// in fp32 with two roundings (the product, then the sum; never a fused multiply-add), exactly
    /// as bitsandbytes' `dequantize_blockwise` followed by `+ nested_offset`.
    /// - Parameters:
    ///   - codes: the whole weight's U8 absmax codes (`X.weight.absmax`), by absolute block number.
    ///   - blocks: the block numbers to resolve.
    ///   - nestedMap: the 256 nested code values (`X.weight.nested_quant_map`).
    ///   - nestedAbsmax: the nested scales (`X.weight.nested_absmax`), one per `nestedBlocksize` blocks.
    ///   - nestedBlocksize: blocks per nested scale (> 0; 256 in bitsandbytes).
    ///   - offset: `nested_offset` of the quant state.
    ///   - out: `blocks.count` fp32 scales.
    public static func resolveAbsmax(
        codes: UnsafeRawBufferPointer, blocks: Range<Int>,
        nestedMap: [Float], nestedAbsmax: UnsafeBufferPointer<Float>, nestedBlocksize: Int, offset: Float,
        into out: UnsafeMutableBufferPointer<Float>
    ) {
        precondition(blocks.lowerBound >= 0 && nestedBlocksize > 0 && nestedMap.count == 256, "a valid range, nested blocksize and 256 code values")
        guard !blocks.isEmpty else { return }
        precondition(codes.count >= blocks.upperBound, "codes hold the blocks")
        precondition(nestedAbsmax.count > (blocks.upperBound - 1) / nestedBlocksize, "nestedAbsmax holds the blocks' scales")
        precondition(out.count >= blocks.count, "out holds the scales")
        nestedMap.withUnsafeBufferPointer { m in
            lora_bnb4_resolve_absmax(codes.baseAddress!.assumingMemoryBound(to: UInt8.self), blocks.lowerBound, blocks.count,
                                     m.baseAddress, nestedAbsmax.baseAddress, nestedBlocksize, offset, out.baseAddress)
        }
    }

    // MARK: - Quantizing

    /// Quantizes `values` blockwise to 4-bit codes, as bitsandbytes' CPU `quantize_4bit`. Per block
    /// of `blocksize` values (the last may be shorter):
    ///
    ///     m      = max |x|                        (fp32; NaN values ignored)
    ///     scaled = min(max(x · (1 / max(m, 1e-38)), −1), 1)   (fp32, one rounding per operation)
    ///     code   = order[number of bounds < scaled]           (torch.bucketize, right = false)
    ///
    /// and `absmax[block] = m`. Codes are packed two per byte, high nibble first; an odd count
    /// leaves the last byte's low nibble 0. The result is the same on every instruction set.
    /// - Parameters:
    ///   - values: fp32 values starting at a block boundary (a whole weight, or whole blocks of one).
    ///   - blocksize: values per block (> 0).
    ///   - bounds: the 15 bounds of `bucketizer(code:)` (non-decreasing, none NaN).
    ///   - order: the 16 code indices of `bucketizer(code:)`.
    ///   - packed: receives `(values.count + 1) / 2` bytes.
    ///   - absmax: receives one fp32 scale per block, `ceil(values.count / blocksize)`.
    ///   - isa: instruction set; nil uses `Kernels.instructionSet()` (or the best when that fails).
    public static func quantize(
        _ values: UnsafeBufferPointer<Float>, blocksize: Int, bounds: [Float], order: [UInt8],
        packed: UnsafeMutableRawBufferPointer, absmax: UnsafeMutableBufferPointer<Float>,
        using isa: InstructionSet? = nil
    ) {
        precondition(blocksize > 0 && bounds.count == 15 && order.count == 16 && order.allSatisfy { $0 < 16 },
                     "blocksize > 0, 15 bounds and 16 code indices")
        precondition(!bounds.contains(where: \.isNaN) && zip(bounds, bounds.dropFirst()).allSatisfy { $0 <= $1 }, "bounds non-decreasing")
        let n = values.count
        guard n > 0 else { return }
        precondition(packed.count >= (n + 1) / 2 && absmax.count >= (n - 1) / blocksize + 1, "packed and absmax have room")
        let isa = Kernels.resolved(isa)
        let status = bounds.withUnsafeBufferPointer { b in
            order.withUnsafeBufferPointer { o in
                lora_bnb4_quantize_isa(isa.rawValue, values.baseAddress, n, blocksize, b.baseAddress, o.baseAddress,
                                       packed.baseAddress!.assumingMemoryBound(to: UInt8.self), absmax.baseAddress)
            }
        }
        precondition(status == 0, "instruction set \(isa) runs on this CPU")
    }

    /// Double quantization of per-block scales, as bitsandbytes' `quantize_4bit(compress_statistics=True)`.
    public struct NestedAbsmax: Sendable, Equatable {
        /// One 8-bit code per block (`X.weight.absmax`, U8).
        public var codes: [UInt8]
        /// One fp32 scale per `nestedBlocksize` blocks (`X.weight.nested_absmax`).
        public var nestedAbsmax: [Float]
        /// The mean of the scales, subtracted before coding (`nested_offset`).
        public var offset: Float
    }

    /// Double-quantizes block scales: offset = mean(absmax) (accumulated in fp64, rounded once to
    /// fp32, as torch's fp32 mean gives for these sizes); then `absmax − offset` (fp32) is quantized
    /// blockwise by `nestedBlocksize` with the 256-value `nestedMap`, by the scaling and bucketing of
    /// `quantize` (per nested block m = max |x|, code = order[number of bounds < clamp(x · (1 / m))]).
    /// `resolveAbsmax` inverts it up to the code's error. Plain Swift: it sees one value per block.
    /// - Parameters:
    ///   - absmax: the fp32 block scales of one weight (at least one).
    ///   - nestedMap: the 256 nested code values (`nestedMap` by default).
    ///   - nestedBlocksize: blocks per nested scale (256 by default).
    public static func quantizeAbsmax(_ absmax: UnsafeBufferPointer<Float>, nestedMap: [Float] = Bnb4bit.nestedMap,
                                      nestedBlocksize: Int = Bnb4bit.nestedBlocksize) -> NestedAbsmax {
        precondition(!absmax.isEmpty && nestedBlocksize > 0 && nestedMap.count == 256, "scales, nested blocksize and 256 code values")
        let (offset, nested) = nestedScales(absmax, nestedBlocksize: nestedBlocksize)
        var codes = [UInt8](repeating: 0, count: absmax.count)
        codes.withUnsafeMutableBufferPointer {
            nestedCodes(absmax, firstBlock: 0, offset: offset, nestedAbsmax: nested, nestedMap: nestedMap, nestedBlocksize: nestedBlocksize, into: $0)
        }
        return NestedAbsmax(codes: codes, nestedAbsmax: nested, offset: offset)
    }

    /// The first half of `quantizeAbsmax`, for a weight whose scales are known before its codes are
    /// needed: offset = mean(absmax) (fp64 sum in block order, rounded once) and, per
    /// `nestedBlocksize` blocks, max |absmax − offset| (fp32).
    public static func nestedScales(_ absmax: UnsafeBufferPointer<Float>, nestedBlocksize: Int) -> (offset: Float, nestedAbsmax: [Float]) {
        precondition(nestedBlocksize > 0, "a nested block size")
        let offset = Float(absmax.reduce(0.0) { $0 + Double($1) } / Double(max(1, absmax.count)))
        var nested: [Float] = []
        nested.reserveCapacity(absmax.isEmpty ? 0 : (absmax.count - 1) / nestedBlocksize + 1)
        var start = 0
        while start < absmax.count {
            var m: Float = 0
            for i in start..<min(start + nestedBlocksize, absmax.count) { m = max(m, abs(absmax[i] - offset)) }
            nested.append(m)
            start += nestedBlocksize
        }
        return (offset, nested)
    }

    /// The second half of `quantizeAbsmax`, for any run of blocks: the code of each scale, blocks
    /// `firstBlock ..< firstBlock + absmax.count` of the weight, given the weight's offset and nested
    /// scales (`nestedScales`): code = order[number of bounds < clamp((absmax − offset) · (1 / m))],
    /// m the block's nested scale.
    public static func nestedCodes(_ absmax: UnsafeBufferPointer<Float>, firstBlock: Int, offset: Float, nestedAbsmax: [Float],
                                   nestedMap: [Float] = Bnb4bit.nestedMap, nestedBlocksize: Int = Bnb4bit.nestedBlocksize,
                                   into codes: UnsafeMutableBufferPointer<UInt8>) {
        precondition(nestedMap.count == 256 && nestedBlocksize > 0 && codes.count >= absmax.count, "256 code values, a nested block size, room for the codes")
        precondition(absmax.isEmpty || nestedAbsmax.count > (firstBlock + absmax.count - 1) / nestedBlocksize, "a nested scale for every block")
        let (bounds, order) = bucketizer(code: nestedMap)
        let counter = BoundCounter(bounds)
        for j in 0..<absmax.count {
            let scale = nestedAbsmax[(firstBlock + j) / nestedBlocksize]
            let scaled = min(max((absmax[j] - offset) * (1 / max(scale, 1e-38)), -1), 1)
            codes[j] = order[counter.count(below: scaled)]
        }
    }

    /// max |x| per block of `values` (blocks of `blocksize`, the last may be shorter; NaN ignored):
    /// the absmax `quantize` computes, without the codes. `absmax` holds one value per block.
    public static func blockAbsmax(_ values: UnsafeBufferPointer<Float>, blocksize: Int, into absmax: UnsafeMutableBufferPointer<Float>) {
        precondition(blocksize > 0 && absmax.count >= (values.count + blocksize - 1) / blocksize, "a block size and room for every block")
        guard !values.isEmpty else { return }
        lora_bnb4_block_absmax(values.baseAddress, values.count, blocksize, absmax.baseAddress)
    }

    /// Σ want·got, Σ want², Σ got² with want = target − old, got = back − old (fp64; `old` and
    /// `back` hold `target.count` values of `format`), each summed in four partial sums by index
    /// mod 4 and added as (s0 + s1) + (s2 + s3): one order on every CPU.
    public static func deltaSums(target: UnsafeBufferPointer<Float>, old: UnsafeRawBufferPointer, back: UnsafeRawBufferPointer,
                                 format: FloatCodec.Format) -> (dot: Double, want: Double, got: Double) {
        precondition(old.count >= target.count * format.size && back.count >= target.count * format.size, "old and back hold every element")
        var sums = (0.0, 0.0, 0.0)
        guard !target.isEmpty else { return sums }
        withUnsafeMutableBytes(of: &sums) {
            lora_delta_sums(target.baseAddress, old.baseAddress, back.baseAddress, FusedMerge.code(format), target.count,
                            $0.baseAddress!.assumingMemoryBound(to: Double.self))
        }
        return sums
    }

    /// The count of `bounds` below a value, which for the sorted bounds of `bucketizer` is
    /// the index of the first bound ≥ x (torch.bucketize, right = false; 0 for NaN).
    /// Two levels of 16-lane compares instead of a search: the bounds padded with +inf to groups of
    /// 16, first the count of groups whose last (largest) bound is below x, then the count within
    /// the next group. No branch and no chain of dependent loads; up to 256 bounds.
    public struct BoundCounter: Sendable {
        let groups: [SIMD16<Float>]
        let lasts: SIMD16<Float>

        public init(_ bounds: [Float]) {
            precondition(bounds.count <= 256, "at most 256 bounds")
            let padded = bounds + [Float](repeating: .infinity, count: 256 - bounds.count)
            let groups = (0..<16).map { g in SIMD16(padded[(g * 16)..<(g * 16 + 16)]) }
            self.groups = groups
            lasts = SIMD16(groups.map { $0[15] })
        }

        public func count(below x: Float) -> Int {
            let v = SIMD16<Float>(repeating: x)
            let full = Int(SIMD16<Int32>(repeating: 0).replacing(with: 1, where: lasts .< v).wrappedSum())
            guard full < 16 else { return 256 }
            return full * 16 + Int(SIMD16<Int32>(repeating: 0).replacing(with: 1, where: groups[full] .< v).wrappedSum())
        }
    }
}
