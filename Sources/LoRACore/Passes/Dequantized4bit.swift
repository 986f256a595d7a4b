import LoRAKernels
import SafeTensors

/// A bitsandbytes 4-bit weight read as its dense values, any element range at a time, exactly as
/// `bitsandbytes.functional.dequantize_4bit` computes them (see `BnbQuantization`): a range decodes
/// only the 64-value blocks it touches, their absmax resolved from the nested tables on the way.
///
/// Layout of the output: the state's shape, row-major, in the state's dtype (the compute dtype
/// bitsandbytes dequantizes to), each value `quant_map[code]·absmax[block]` in fp32 rounded once.
/// Element-aligned ranges only (the model-directory sink aligns the ranges it asks for).
public struct Dequantized4bit: TensorSource {
    /// The stored codes tensor (`X.weight`, U8).
    public let weight: String
    public let state: BnbQuantization.State
    /// The stored 4-bit tensors this weight decodes from (codes and companions), by name, as the
    /// input stream had them: what requantize writes back for a weight the merge did not change.
    public let stored: [(name: String, source: any TensorSource)]
    private let input: any TensorStore
    private let quantMap: [Float]
    /// Double quantization: the 256-value map, the absmax of every 256 absmax codes, the offset.
    private let nested: (map: [Float], absmax: [Float], blocksize: Int, offset: Float)?

    public var dtype: DType { state.dtype }
    public var shape: [Int] { state.shape }

    /// Reads the weight's small tables (quant maps, nested absmax: kilobytes) and checks every
    /// companion's size against the state, so that filling cannot fail on a malformed file.
    /// - Throws: `LoRACoreError.invalidModule` naming the weight.
    init(weight: String, state s: BnbQuantization.State, in input: any TensorStore, stored: [(name: String, source: any TensorSource)]) throws {
        self.weight = weight
        state = s
        self.input = input
        self.stored = stored
        let n = s.shape.reduce(1, *)
        func fail(_ detail: String) -> LoRACoreError { LoRACoreError.invalidModule(module: weight, detail: detail) }
        guard let codes = input.info(weight), codes.byteCount * 2 >= n else {
            throw fail("\(input.info(weight)?.byteCount ?? 0) code bytes cannot hold \(n) values")
        }
        quantMap = try TensorData.floats(input, weight + ".quant_map")
        guard quantMap.count == 16 else { throw fail("quant_map must have 16 values") }
        guard let format = TensorData.format(s.dtype), format.size > 0 else { throw fail("quant_state dtype \(s.dtype.rawValue) is not a float type") }
        let blocks = (n + s.blocksize - 1) / s.blocksize
        let absInfo = input.info(weight + ".absmax")!
        if absInfo.dtype == .uint8 {
            guard let nb = s.nestedBlocksize, nb > 0, let offset = s.nestedOffset,
                  input.info(weight + ".nested_quant_map") != nil, input.info(weight + ".nested_absmax") != nil else {
                throw fail("U8 absmax needs nested_quant_map, nested_absmax and nested_offset")
            }
            let map = try TensorData.floats(input, weight + ".nested_quant_map")
            let nestedAbsmax = try TensorData.floats(input, weight + ".nested_absmax")
            guard absInfo.byteCount >= blocks, map.count == 256, nestedAbsmax.count * nb >= blocks else {
                throw fail("absmax tables are too short for \(blocks) blocks")
            }
            nested = (map, nestedAbsmax, nb, offset)
        } else {
            guard absInfo.dtype == .float32, absInfo.byteCount >= blocks * 4 else {
                throw fail("absmax has \(absInfo.byteCount / 4) blocks, needs \(blocks)")
            }
            nested = nil
        }
    }

    public func fill(_ range: Range<Int>, into destination: UnsafeMutableRawPointer) throws {
        let format = TensorData.format(state.dtype)!
        try decode(range.lowerBound / format.size..<(range.upperBound / format.size), into: UnsafeMutableRawBufferPointer(start: destination, count: range.count))
    }

    /// Elements `elements` as bytes of the state's dtype: the codes and absmax of the blocks they
    /// touch are read (from the first touched block's start, so both tables share one origin) and
    /// decoded by the `Bnb4bit` kernel.
    private func decode(_ elements: Range<Int>, into out: UnsafeMutableRawBufferPointer) throws {
        guard !elements.isEmpty else { return }
        let bs = state.blocksize
        let b0 = elements.lowerBound / bs, b1 = (elements.upperBound + bs - 1) / bs
        let origin = b0 * bs  // even: blocks hold an even number of values
        let absmax = try resolvedAbsmax(b0..<b1)
        var codes = [UInt8](uninitializedCount: (elements.upperBound - origin + 1) / 2)
        try codes.withUnsafeMutableBytes { try input.read(weight, bytes: (origin / 2)..<(origin / 2 + $0.count), into: $0.baseAddress!) }
        codes.withUnsafeBytes { packed in
            absmax.withUnsafeBufferPointer { a in
                Bnb4bit.decode(packed, elements: (elements.lowerBound - origin)..<(elements.upperBound - origin), absmax: a, blocksize: bs,
                               quantMap: quantMap, into: out, format: TensorData.format(state.dtype)!)
            }
        }
    }

    /// The fp32 absmax of blocks `blocks`: stored, or resolved from the nested tables as
    /// `nested_map[code]·nested_absmax[block / 256] + offset` (two roundings, no fused multiply-add).
    func resolvedAbsmax(_ blocks: Range<Int>) throws -> [Float] {
        guard let nested else {
            var a = [Float](repeating: 0, count: blocks.count)
            try a.withUnsafeMutableBytes { try input.read(weight + ".absmax", bytes: (blocks.lowerBound * 4)..<(blocks.upperBound * 4), into: $0.baseAddress!) }
            return a
        }
        // Codes from the start of the first block's nested group, so that the kernel's block
        // numbers index the codes and the nested absmax alike.
        let origin = blocks.lowerBound / nested.blocksize * nested.blocksize
        let local = (blocks.lowerBound - origin)..<(blocks.upperBound - origin)
        var codes = [UInt8](repeating: 0, count: local.upperBound)
        try codes.withUnsafeMutableBytes { try input.read(weight + ".absmax", bytes: blocks, into: $0.baseAddress! + local.lowerBound) }
        var resolved = [Float](repeating: 0, count: blocks.count)
        codes.withUnsafeBytes { c in
            nested.absmax.withUnsafeBufferPointer { n in
                resolved.withUnsafeMutableBufferPointer {
                    Bnb4bit.resolveAbsmax(codes: c, blocks: local, nestedMap: nested.map,
                                          nestedAbsmax: UnsafeBufferPointer(rebasing: n[(origin / nested.blocksize)...]),
                                          nestedBlocksize: nested.blocksize, offset: nested.offset, into: $0)
                }
            }
        }
        return resolved
    }
}
