import Foundation
import LoRAKernels
import SafeTensors

/// bitsandbytes 4-bit (NF4/FP4) weights as transformers serializes them in safetensors.
///
/// Per quantized weight `X.weight`: `X.weight` (U8, two 4-bit codes per byte, high nibble first),
/// `X.weight.absmax` (F32 per block, or U8 codes when double-quantized), `X.weight.quant_map` (F32[16]),
/// with double quantization `X.weight.nested_absmax` (F32 per 256-block) and
/// `X.weight.nested_quant_map` (F32[256]), and `X.weight.quant_state.bitsandbytes__nf4|fp4` (U8 bytes of
/// JSON: quant_type, blocksize, dtype, shape, nested_blocksize, nested_offset).
/// Dequantization, exactly as `bitsandbytes.functional.dequantize_4bit`: absmax[j] =
/// nested_quant_map[absmax_u8[j]]·nested_absmax[j / nested_blocksize] + nested_offset (fp32), then
/// w[i] = quant_map[code[i]]·absmax[i / blocksize] in fp32, rounded once to the stored dtype.
public struct BnbQuantization: Sendable {
    public struct State: Sendable, Equatable {
        public var quantType: String
        public var blocksize: Int
        public var dtype: DType
        public var shape: [Int]
        public var nestedBlocksize: Int?
        public var nestedOffset: Float?
    }

    /// Quantized weight name → its state.
    public let states: [String: State]
    /// Every companion tensor (absmax, quant_map, nested_*, quant_state), which a dense model drops.
    public let companions: Set<String>

    static let companionSuffixes = [".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map",
                                    ".quant_state.bitsandbytes__nf4", ".quant_state.bitsandbytes__fp4"]

    /// Finds the 4-bit weights of `ckpt`; nil when it has none.
    /// - Throws: `LoRACoreError.invalidModule` for a malformed quant state.
    public init?(_ ckpt: Checkpoint) throws {
        var states: [String: State] = [:]
        var companions = Set<String>()
        for name in ckpt.names {
            let suffix = [".quant_state.bitsandbytes__nf4", ".quant_state.bitsandbytes__fp4"].first { name.hasSuffix($0) }
            guard let suffix else { continue }
            let weight = String(name.dropLast(suffix.count))
            let json: JSONValue
            do { json = try JSONParser.parse(Array(try ckpt.bytes(of: name))) } catch {
                throw LoRACoreError.invalidModule(module: weight, detail: "quant_state is not valid JSON")
            }
            guard let type = json["quant_type"]?.stringValue, type == "nf4" || type == "fp4",
                  let blocksize = json["blocksize"]?.intValue, blocksize > 0,
                  let dtypeName = json["dtype"]?.stringValue,
                  let dtype = ["bfloat16": DType.bfloat16, "float16": .float16, "float32": .float32][dtypeName],
                  let shape = json["shape"]?.arrayValue?.compactMap(\.intValue), !shape.isEmpty, shape.allSatisfy({ $0 > 0 })
            else {
                throw LoRACoreError.invalidModule(module: weight, detail: "quant_state lacks quant_type/blocksize/dtype/shape")
            }
            let state = State(quantType: type, blocksize: blocksize, dtype: dtype, shape: shape,
                              nestedBlocksize: json["nested_blocksize"]?.intValue,
                              nestedOffset: json["nested_offset"]?.doubleValue.map(Float.init))
            guard ckpt.info(weight)?.dtype == .uint8, ckpt.info(weight + ".absmax") != nil, ckpt.info(weight + ".quant_map") != nil else {
                throw LoRACoreError.invalidModule(module: weight, detail: "4-bit weight without its U8 codes, absmax or quant_map")
            }
            states[weight] = state
            for s in BnbQuantization.companionSuffixes where ckpt.info(weight + s) != nil { companions.insert(weight + s) }
        }
        guard !states.isEmpty else { return nil }
        self.states = states
        self.companions = companions
    }

    /// The dense values of `weight` in fp32, each already rounded to the state's dtype (bit-exact
    /// with bitsandbytes' `dequantize_4bit`).
    public func dequantize(_ weight: String, in ckpt: Checkpoint) throws -> [Float] {
        guard let s = states[weight] else { throw SafeTensorsError.tensorNotFound(tensor: weight, in: ckpt.path) }
        let n = s.shape.reduce(1, *)
        try MemoryBudget.check(elements: n, bytesPerElement: 8, what: "4-bit weight '\(weight)'")
        let codes = try ckpt.bytes(of: weight)
        guard codes.count * 2 >= n else {
            throw LoRACoreError.invalidModule(module: weight, detail: "\(codes.count) code bytes cannot hold \(n) values")
        }
        let quantMap = try TensorData.floats(ckpt, weight + ".quant_map")
        guard quantMap.count == 16 else { throw LoRACoreError.invalidModule(module: weight, detail: "quant_map must have 16 values") }
        let blocks = (n + s.blocksize - 1) / s.blocksize
        var absmax: [Float]
        let absInfo = ckpt.info(weight + ".absmax")!
        if absInfo.dtype == .uint8 {
            guard let nestedBlock = s.nestedBlocksize, nestedBlock > 0, let offset = s.nestedOffset,
                  ckpt.info(weight + ".nested_quant_map") != nil, ckpt.info(weight + ".nested_absmax") != nil else {
                throw LoRACoreError.invalidModule(module: weight, detail: "U8 absmax needs nested_quant_map, nested_absmax and nested_offset")
            }
            let codesAbs = Array(try ckpt.bytes(of: weight + ".absmax"))
            let nestedMap = try TensorData.floats(ckpt, weight + ".nested_quant_map")
            let nestedAbs = try TensorData.floats(ckpt, weight + ".nested_absmax")
            guard codesAbs.count >= blocks, nestedMap.count == 256, nestedAbs.count * nestedBlock >= blocks else {
                throw LoRACoreError.invalidModule(module: weight, detail: "absmax tables are too short for \(blocks) blocks")
            }
            absmax = (0..<blocks).map { j in nestedMap[Int(codesAbs[j])] * nestedAbs[j / nestedBlock] + offset }
        } else {
            absmax = try TensorData.floats(ckpt, weight + ".absmax")
            guard absmax.count >= blocks else { throw LoRACoreError.invalidModule(module: weight, detail: "absmax has \(absmax.count) blocks, needs \(blocks)") }
        }
        let format = TensorData.format(s.dtype)!
        var out = [Float](repeating: 0, count: n)
        for i in 0..<n {
            let byte = codes[i / 2]
            let code = i % 2 == 0 ? Int(byte >> 4) : Int(byte & 0x0F)
            out[i] = FloatCodec.roundTrip(quantMap[code] * absmax[i / s.blocksize], format: format)
        }
        return out
    }

    /// Bytes the 4-bit form takes versus the dense dtype, for inspect.
    public func sizes(in ckpt: Checkpoint) -> (quantized: Int, dense: Int) {
        var q = 0, d = 0
        for (w, s) in states {
            q += ckpt.info(w)?.byteCount ?? 0
            for c in BnbQuantization.companionSuffixes { q += ckpt.info(w + c)?.byteCount ?? 0 }
            d += s.shape.reduce(1, *) * s.dtype.bitSize / 8
        }
        return (q, d)
    }
}
