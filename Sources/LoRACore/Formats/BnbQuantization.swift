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

    /// The 4-bit weights among `names` (by their quant_state tensor), with their type, and every
    /// companion: from names alone.
    static func quantizedWeights(names: [String]) -> (weights: [String: String], companions: Set<String>) {
        var weights: [String: String] = [:]
        for name in names {
            for type in ["nf4", "fp4"] where name.hasSuffix(".quant_state.bitsandbytes__" + type) {
                weights[String(name.dropLast(".quant_state.bitsandbytes__".count + type.count))] = type
            }
        }
        let all = Set(names)
        var companions = Set<String>()
        for w in weights.keys { for s in companionSuffixes where all.contains(w + s) { companions.insert(w + s) } }
        return (weights, companions)
    }

    /// Finds the 4-bit weights of `ckpt`; nil when it has none.
    /// - Throws: `LoRACoreError.invalidModule` for a malformed quant state.
    public init?(_ ckpt: any TensorStore) throws {
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

    /// Bytes the 4-bit form takes versus the dense dtype, for inspect.
    public func sizes(in ckpt: any TensorStore) -> (quantized: Int, dense: Int) {
        var q = 0, d = 0
        for (w, s) in states {
            q += ckpt.info(w)?.byteCount ?? 0
            for c in BnbQuantization.companionSuffixes { q += ckpt.info(w + c)?.byteCount ?? 0 }
            d += s.shape.reduce(1, *) * s.dtype.bitSize / 8
        }
        return (q, d)
    }
}
