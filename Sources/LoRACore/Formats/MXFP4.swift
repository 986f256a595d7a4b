import LoRAKernels
import SafeTensors

/// MXFP4 (`quant_method: "mxfp4"`, gpt-oss; transformers' `integrations/mxfp4.py`): each quantized
/// parameter `P` (the fused experts `mlp.experts.gate_up_proj`, `mlp.experts.down_proj`, dense
/// `[E, in, out]`) is stored as `P_blocks` U8 `[E, out, in/32, 16]` (two FP4 E2M1 codes a byte, the
/// low nibble the even input index) and `P_scales` U8 `[E, out, in/32]` (E8M0: 2^(s−127), one per 32
/// inputs of an output). Every other tensor is dense.
///
/// Dequantization is `convert_moe_packed_tensors`: each code's E2M1 value (±{0, ½, 1, 1½, 2, 3, 4, 6})
/// times 2^(s−127), a product of fp32 values (exact, torch's `ldexp` of the compute dtype's values by
/// an fp32 power of two; s = 255 gives ±inf or NaN), rounded once to the compute dtype; the
/// `[E, out, in]` result is transposed to the parameter's `[E, in, out]`.
///
/// Quantization (`merge --requantize keep|mxfp4`): `MXFP4Quantization+Quantize.swift`.
public struct MXFP4Quantization: Sendable {
    /// One quantized parameter: its stored tensors and its dense shape `[E, in, out]`.
    public struct Weight: Sendable, Equatable {
        public var blocks: String
        public var scales: String
        public var shape: [Int]
    }

    /// The dtype weights dequantize to (config.json's `torch_dtype`/`dtype`).
    public let computeDType: DType
    /// Dense parameter name (`…experts.gate_up_proj`) → its stored tensors.
    public let weights: [String: Weight]

    /// The stored tensors, which a dense model replaces by the parameters.
    public var companions: Set<String> { Set(weights.values.flatMap { [$0.blocks, $0.scales] }) }

    /// For reports: the scheme and the kinds of tensors it quantizes.
    public var description: String {
        let kinds = Set(weights.keys.map { $0.split(separator: ".").suffix(2).joined(separator: ".") }).sorted()
        return "mxfp4, block 32, E8M0 scales (" + kinds.joined(separator: ", ") + ")"
    }

    /// E2M1 values of the 16 codes (transformers' `FP4_VALUES`).
    static let values: [Float] = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6]

    /// The fp32 value of a code in a block whose E8M0 scale is `scale`.
    @inline(__always)
    static func value(of code: UInt8, scale: UInt8) -> Float {
        values[Int(code & 0x0F)] * Float(sign: .plus, exponent: Int(scale) - 127, significand: 1)
    }

    /// Keys `Mxfp4Config.to_dict` writes; `dequantize` is a loading option (the stored layout is the same).
    static let knownKeys: Set<String> = ["quant_method", "modules_to_not_convert", "dequantize"]

    /// The MXFP4 parameters of `stream`, when its config.json says `quant_method: "mxfp4"`; nil otherwise.
    /// - Throws: `LoRACoreError.invalidConfig` for an unknown config key or compute dtype, or no MXFP4 tensors,
    ///   `.invalidModule` for blocks or scales that do not fit each other.
    static func read(_ stream: TensorStream) throws -> MXFP4Quantization? {
        guard let dir = stream.sideFiles?.directory, let root = try SideFiles.readJSON(dir + "/config.json"),
              let q = root["quantization_config"], q["quant_method"]?.stringValue == "mxfp4" else { return nil }
        let config = dir + "/config.json"
        var weights: [String: Weight] = [:]
        for name in stream.names where name.hasSuffix("_blocks") {
            let dense = String(name.dropLast("_blocks".count)), scalesName = dense + "_scales"
            guard let blocks = stream.source(name) else { continue }
            guard let scales = stream.source(scalesName) else { throw LoRACoreError.invalidModule(module: name, detail: "MXFP4 blocks without their \(scalesName)") }
            let b = blocks.shape, s = scales.shape
            guard blocks.dtype == .uint8, scales.dtype == .uint8, b.count == 4, b[3] == 16, Array(b.prefix(3)) == s else {
                throw LoRACoreError.invalidModule(module: name, detail: "MXFP4 blocks \(blocks.dtype.rawValue) \(b) and scales \(scales.dtype.rawValue) \(s) do not fit: U8 [E, out, in/32, 16] and U8 [E, out, in/32]")
            }
            guard stream.source(dense) == nil else { throw LoRACoreError.invalidModule(module: dense, detail: "stored both dense and as MXFP4 blocks") }
            weights[dense] = Weight(blocks: name, scales: scalesName, shape: [b[0], b[2] * 32, b[1]])
        }
        if let stray = stream.names.first(where: { $0.hasSuffix("_scales") && weights[String($0.dropLast("_scales".count))] == nil }),
           stream.source(stray)?.dtype == .uint8 {
            throw LoRACoreError.invalidModule(module: stray, detail: "MXFP4 scales without their _blocks")
        }
        guard !weights.isEmpty else {
            throw LoRACoreError.invalidConfig(file: config, detail: "quant_method mxfp4, but no tensor is stored as MXFP4 (P_blocks with P_scales)")
        }
        for (key, _) in q.objectMembers ?? [] where !knownKeys.contains(key) {
            throw LoRACoreError.invalidConfig(file: config, detail: "mxfp4 quantization_config: key '\(key)' is not supported")
        }
        let dtype = try BlockScaledQuantization.computeDType(root, config: config, scheme: "mxfp4")
        return MXFP4Quantization(computeDType: dtype, weights: weights)
    }
}

/// An MXFP4 parameter read as its dense `[E, in, out]` values in the compute dtype, any element
/// range at a time, exactly as `convert_moe_packed_tensors` (`MXFP4Quantization.value`, one rounding).
/// A range reads the blocks and scales of the experts it covers, one expert at a time.
public struct DequantizedMXFP4: TensorSource {
    public let name: String
    public let weight: MXFP4Quantization.Weight
    public let dtype: DType
    /// The stored blocks and scales, as the input had them: what a requantizing merge writes back
    /// for a parameter it did not change.
    public let stored: [(name: String, source: any TensorSource)]
    private let input: any TensorStore

    public var shape: [Int] { weight.shape }

    init(name: String, weight: MXFP4Quantization.Weight, dtype: DType, in input: any TensorStore, stored: [(name: String, source: any TensorSource)]) {
        self.name = name
        self.weight = weight
        self.dtype = dtype
        self.input = input
        self.stored = stored
    }

    /// Expert `expert`'s stored codes (`[out, in/32, 16]` bytes) and scales (`[out, in/32]`).
    /// - Throws: reading the input.
    func storedBytes(ofExpert expert: Int) throws -> (blocks: [UInt8], scales: [UInt8]) {
        let (inputs, outputs) = (weight.shape[1], weight.shape[2])
        let codeBytes = inputs * outputs / 2, scaleBytes = outputs * inputs / 32
        var blocks = [UInt8](uninitializedCount: codeBytes), scales = [UInt8](uninitializedCount: scaleBytes)
        try blocks.withUnsafeMutableBytes { try input.read(weight.blocks, bytes: expert * codeBytes..<((expert + 1) * codeBytes), into: $0.baseAddress!) }
        try scales.withUnsafeMutableBytes { try input.read(weight.scales, bytes: expert * scaleBytes..<((expert + 1) * scaleBytes), into: $0.baseAddress!) }
        return (blocks, scales)
    }

    public func fill(_ range: Range<Int>, into destination: UnsafeMutableRawPointer) throws {
        let format = TensorData.format(dtype)!
        let elements = range.lowerBound / format.size..<(range.upperBound / format.size)
        let (inputs, outputs) = (weight.shape[1], weight.shape[2])
        let perExpert = inputs * outputs, groups = inputs / 32
        var e = elements.lowerBound
        while e < elements.upperBound {
            let expert = e / perExpert, end = min(elements.upperBound, (expert + 1) * perExpert)
            let (blocks, scales) = try storedBytes(ofExpert: expert)
            var values = [Float](uninitializedCount: end - e)
            for k in e..<end {
                let local = k - expert * perExpert, i = local / outputs, o = local % outputs
                let byte = blocks[o * inputs / 2 + i / 2]
                values[k - e] = MXFP4Quantization.value(of: i & 1 == 0 ? byte & 0x0F : byte >> 4, scale: scales[o * groups + i / 32])
            }
            values.withUnsafeBufferPointer {
                FloatCodec.encode($0, format: format, into: UnsafeMutableRawBufferPointer(start: destination + (e - elements.lowerBound) * format.size,
                                                                                          count: (end - e) * format.size))
            }
            e = end
        }
    }
}

/// Replaces every MXFP4 parameter of a stream by its dense values (`DequantizedMXFP4`), under the
/// parameter's own name, and drops its blocks and scales; the side files lose `quantization_config`.
/// A stream of another scheme is returned as it is.
public struct DequantizeMXFP4Pass: Sendable {
    public init() {}

    /// - Throws: `MXFP4Quantization.read`'s errors.
    public func apply(to stream: TensorStream) throws -> TensorStream {
        guard let q = try MXFP4Quantization.read(stream) else { return stream }
        var tensors: [(name: String, source: any TensorSource)] = []
        for (name, source) in stream.tensors {
            if name.hasSuffix("_blocks"), let dense = q.weights.first(where: { $0.value.blocks == name }) {
                let stored = [dense.value.blocks, dense.value.scales].map { ($0, stream.source($0)!) }
                tensors.append((dense.key, DequantizedMXFP4(name: dense.key, weight: dense.value, dtype: q.computeDType, in: stream, stored: stored)))
            } else if !q.companions.contains(name) {
                tensors.append((name, source))
            }
        }
        var side = stream.sideFiles
        side?.dropQuantization = true
        return stream.with(tensors, sideFiles: side)
    }
}
