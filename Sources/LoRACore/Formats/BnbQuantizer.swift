/// bitsandbytes' 4-bit quantization (its `default` backend, which CPU uses), reproduced for
/// `merge --requantize`.
///
/// Per block of `blocksize` values: absmax = max|x| (fp32); scaled = clamp(x·(1/absmax), −1, 1);
/// code index = bucket of `scaled` among the midpoints of the sorted code values (a value on a
/// midpoint goes to the lower bucket, as `torch.bucketize`); two codes per byte, high nibble first.
/// Double quantization: offset = mean(absmax); (absmax − offset) quantized blockwise (256) with the
/// 256-value nested map the same way.
struct BnbQuantizer {
    struct Output {
        var packed: [UInt8]
        /// Per-block absmax in fp32 (no double quantization).
        var absmax: [Float]?
        /// Double quantization: absmax codes, nested absmax per 256 blocks, and the offset.
        var absmaxCodes: [UInt8]?
        var nestedAbsmax: [Float]?
        var offset: Float?
    }

    /// Bucket of each value among the midpoints of the sorted `code`, mapped back to code indices.
    static func bucketizer(_ code: [Float]) -> (bounds: [Float], order: [Int]) {
        let order = code.indices.sorted { code[$0] < code[$1] || (code[$0] == code[$1] && $0 < $1) }
        let bounds = (0..<(order.count - 1)).map { (code[order[$0]] + code[order[$0 + 1]]) / 2 }
        return (bounds, order)
    }

    /// Index of the first bound ≥ x (torch.bucketize, right = false).
    static func bucket(_ x: Float, _ bounds: [Float]) -> Int {
        var lo = 0, hi = bounds.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if bounds[mid] < x { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    /// Blockwise absmax scaling and bucketing: (codes, absmax per block).
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

    static func quantize(_ values: [Float], blocksize: Int, quantMap: [Float], nested: (map: [Float], blocksize: Int)?) -> Output {
        var (codes, absmax) = blockwise(values, blocksize: blocksize, code: quantMap)
        if codes.count % 2 == 1 { codes.append(0) }
        var packed = [UInt8](repeating: 0, count: codes.count / 2)
        for j in packed.indices { packed[j] = codes[2 * j] << 4 | codes[2 * j + 1] }
        guard let nested else { return Output(packed: packed, absmax: absmax) }
        // torch's fp32 mean: accumulate in fp64 and round once (equal for these block counts).
        let offset = Float(absmax.reduce(0.0) { $0 + Double($1) } / Double(absmax.count))
        let (absCodes, nestedAbs) = blockwise(absmax.map { $0 - offset }, blocksize: nested.blocksize, code: nested.map)
        return Output(packed: packed, absmaxCodes: absCodes, nestedAbsmax: nestedAbs, offset: offset)
    }
}
