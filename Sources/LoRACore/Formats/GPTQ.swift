import LoRAKernels
import SafeTensors

/// GPTQ and AWQ integer weights (`quant_method: "gptq"` / `"awq"`), read as the packages that define
/// them dequantize: each quantized Linear `X` is stored as
///
///     GPTQ (gptqmodel 7.7 `PackableQuantLinear`; transformers/optimum checkpoints):
///       X.qweight I32 [in·bits/32, out]   codes packed along the input, input i of output o at
///                                          word [i / (32/bits), o], bits·(i mod 32/bits) up
///       X.qzeros  I32 [groups, out·bits/32] zero points packed along the output the same way
///       X.scales  F16 [groups, out]
///       X.g_idx   I32 [in]                 each input's group (desc_act orders them freely)
///     AWQ (autoawq 0.2.9 `WQLinear_GEMM`, version "gemm", 4-bit):
///       X.qweight I32 [in, out/8]          output 8c + m of input i in word [i, c] at 4·(0,4,1,5,2,6,3,7)[m]
///       X.qzeros  I32 [groups, out/8]      packed the same way; group of input i: i / group_size
///       X.scales  F16 [groups, out]
///
/// Dequantized weight [out, in] (the Linear's, the packages' [in, out] result transposed):
/// W[o][i] = s · (q − z), s the group's scale, q and z the codes, the product exact in fp32 and
/// rounded once to the compute dtype: in fp16 exactly gptqmodel's `dequantize_weight` and autoawq's
/// `dequantize_gemm` (fp16 scales times small integers, one rounding). GPTQ's v1 checkpoint format
/// (`checkpoint_format: "gptq"`, what transformers and optimum write) stores each zero point minus 1:
/// gptqmodel adds 0x11111111 (4-bit; 0x55555555 2-bit, 0x01010101 8-bit) to every packed zero word,
/// as a wrapping 32-bit addition, before it unpacks them, and so does this reader (a stored −1, which
/// borrowed from the next code when it was packed, comes back as gptqmodel reads it). `gptq_v2`
/// stores zero points as they are.
///
/// Writing a merge back in GPTQ or AWQ would need the calibration data their quantizers use (it is
/// not a rounding of the merged weights), so `--requantize` and `--keep-quantized` refuse them.
public struct GPTQQuantization: Sendable {
    /// How the codes are packed.
    public enum Packing: String, Sendable {
        /// GPTQ, zero points stored minus one (`checkpoint_format` gptq).
        case gptqV1 = "gptq"
        /// GPTQ, zero points stored as they are (`checkpoint_format` gptq_v2).
        case gptqV2 = "gptq_v2"
        /// AWQ GEMM: along the output, in AWQ's interleaved order.
        case awqGEMM = "awq gemm"
    }

    /// One quantized Linear: its stored tensors and its dense shape [out, in].
    public struct Weight: Sendable, Equatable {
        public var qweight: String
        public var qzeros: String
        public var scales: String
        public var gIdx: String?
        public var shape: [Int]
        public var groups: Int
    }

    public let packing: Packing
    public let bits: Int
    /// Inputs per group (AWQ, and GPTQ without g_idx); -1 (per channel) reads as `in`.
    public let groupSize: Int
    public let descAct: Bool
    public let computeDType: DType
    /// Dense weight name (`….q_proj.weight`) → its stored tensors.
    public let weights: [String: Weight]

    /// The stored tensors a dense model replaces by the weights.
    public var companions: Set<String> { Set(weights.values.flatMap { [$0.qweight, $0.qzeros, $0.scales] + ($0.gIdx.map { [$0] } ?? []) }) }

    /// For reports: `gptq int4, group 128, act order (v1 zero points)`, `awq int4 gemm, group 128`.
    public var description: String {
        switch packing {
        case .awqGEMM: return "awq int\(bits) gemm, group \(groupSize)"
        case .gptqV1, .gptqV2:
            return "gptq int\(bits), group \(groupSize)\(descAct ? ", act order" : "") (\(packing == .gptqV1 ? "v1" : "v2") zero points)"
        }
    }

    /// Codes per 32-bit word.
    var perWord: Int { 32 / bits }

    /// The wrapping addition gptqmodel's `convert_gptq_v1_to_v2_format_module` applies to each v1
    /// zero word: one in every code.
    var v1ZeroOffset: UInt32 {
        switch bits {
        case 2: return 0x5555_5555
        case 4: return 0x1111_1111
        default: return 0x0101_0101
        }
    }

    /// AWQ's order: output 8c + m sits in nibble `awqNibble[m]` of word c (`AWQ_REVERSE_ORDER`).
    static let awqNibble = [0, 4, 1, 5, 2, 6, 3, 7]

    /// Keys that decide the stored layout (read), and keys that only steer calibration, kernels or
    /// loading (transformers' GPTQConfig/AwqConfig `to_dict`), which a stored layout does not depend on.
    static let layoutKeys: Set<String> = ["quant_method", "bits", "group_size", "desc_act", "sym", "checkpoint_format", "format", "version",
                                          "zero_point", "modules_to_not_convert", "pack_dtype"]
    static let otherKeys: Set<String> = ["tokenizer", "dataset", "damp_percent", "act_group_aware", "true_sequential", "meta", "backend",
                                         "model_seqlen", "block_name_to_quantize", "module_name_preceding_first_block", "batch_size",
                                         "pad_token_id", "max_input_length", "cache_block_outputs", "modules_in_block_to_quantize",
                                         "use_exllama", "exllama_config", "use_cuda_fp16", "static_groups", "damp_auto_increment",
                                         "lm_head", "do_fuse", "fuse_max_seq_len", "quantizer", "v2", "v2_alpha", "mse", "hyb_act"]

    /// The GPTQ/AWQ weights of `stream`, when its config.json says `quant_method` gptq or awq; nil otherwise.
    /// - Throws: `LoRACoreError.invalidConfig` naming config.json and the key for a layout it does not
    ///   read (other bits, formats, versions, keys it does not know), `.invalidModule` for tensors
    ///   that do not fit each other.
    static func read(_ stream: TensorStream) throws -> GPTQQuantization? {
        guard let dir = stream.sideFiles?.directory, let root = try SideFiles.readJSON(dir + "/config.json"),
              let q = root["quantization_config"], let method = q["quant_method"]?.stringValue, method == "gptq" || method == "awq" else { return nil }
        let config = dir + "/config.json"
        func bad(_ detail: String) -> LoRACoreError { .invalidConfig(file: config, detail: "\(method) quantization_config: \(detail)") }
        for (key, _) in q.objectMembers ?? [] where !layoutKeys.contains(key) && !otherKeys.contains(key) {
            throw bad("key '\(key)' is not supported")
        }
        guard let bits = q["bits"]?.intValue, method == "awq" ? bits == 4 : [2, 4, 8].contains(bits) else {
            throw bad("bits \(q["bits"]?.intValue.map(String.init) ?? "missing or not an integer"): \(method == "awq" ? "AWQ GEMM packs 4-bit codes" : "2, 4 and 8 are read (3-bit codes straddle words)")")
        }
        guard let groupSize = q["group_size"]?.intValue, groupSize > 0 || groupSize == -1 else { throw bad("group_size must be a positive integer or -1") }
        if let p = q["pack_dtype"]?.stringValue, p != "int32" { throw bad("pack_dtype '\(p)': int32 words are read") }
        let packing: Packing
        if method == "awq" {
            let version = (q["version"]?.stringValue ?? q["format"]?.stringValue ?? "gemm").lowercased()
            guard version == "gemm" else { throw bad("version '\(version)': the GEMM packing is read (GEMV, exllama and ipex pack differently)") }
            guard q["zero_point"]?.boolValue ?? true else { throw bad("zero_point false is not read") }
            packing = .awqGEMM
        } else {
            let format = q["checkpoint_format"]?.stringValue ?? q["format"]?.stringValue ?? "gptq"
            guard let p = Packing(rawValue: format), p != .awqGEMM else { throw bad("checkpoint_format '\(format)': gptq (v1) and gptq_v2 are read") }
            packing = p
        }
        var weights: [String: Weight] = [:]
        for name in stream.names where name.hasSuffix(".qweight") {
            let module = String(name.dropLast(".qweight".count)), dense = module + ".weight"
            guard let qw = stream.source(name), let qz = stream.source(module + ".qzeros"), let sc = stream.source(module + ".scales") else {
                throw LoRACoreError.invalidModule(module: module, detail: "\(method) qweight without its qzeros and scales")
            }
            guard stream.source(dense) == nil else { throw LoRACoreError.invalidModule(module: module, detail: "stored both dense and as \(method) codes") }
            let g = stream.source(module + ".g_idx")
            let perWord = 32 / bits
            guard qw.dtype == .int32, qz.dtype == .int32, qw.shape.count == 2, qz.shape.count == 2, sc.shape.count == 2,
                  TensorData.format(sc.dtype) != nil else {
                throw LoRACoreError.invalidModule(module: module, detail: "qweight \(qw.dtype.rawValue) \(qw.shape), qzeros \(qz.dtype.rawValue) \(qz.shape), scales \(sc.dtype.rawValue) \(sc.shape): expected I32, I32 and float matrices")
            }
            let (inputs, outputs) = packing == .awqGEMM ? (qw.shape[0], qw.shape[1] * perWord) : (qw.shape[0] * perWord, qw.shape[1])
            let size = groupSize == -1 ? inputs : groupSize
            let groups = sc.shape[0]
            guard sc.shape[1] == outputs, qz.shape == [groups, outputs / perWord], outputs % perWord == 0,
                  packing != .awqGEMM ? groups >= (inputs + size - 1) / size : groups == (inputs + size - 1) / size else {
                throw LoRACoreError.invalidModule(
                    module: module, detail: "qweight \(qw.shape), qzeros \(qz.shape) and scales \(sc.shape) do not fit \(bits)-bit codes of a [\(outputs), \(inputs)] weight in groups of \(size)")
            }
            if let g {
                guard packing != .awqGEMM, g.dtype == .int32, g.shape == [inputs] else {
                    throw LoRACoreError.invalidModule(module: module, detail: "g_idx \(g.dtype.rawValue) \(g.shape): expected I32 [\(inputs)] (GPTQ only)")
                }
            }
            weights[dense] = Weight(qweight: name, qzeros: module + ".qzeros", scales: module + ".scales", gIdx: g == nil ? nil : module + ".g_idx",
                                    shape: [outputs, inputs], groups: groups)
        }
        guard !weights.isEmpty else { throw bad("no tensor is stored as \(method) codes (X.qweight with X.qzeros and X.scales)") }
        let dtype = try BlockScaledQuantization.computeDType(root, config: config, scheme: method)
        return GPTQQuantization(packing: packing, bits: bits, groupSize: groupSize == -1 ? -1 : groupSize, descAct: q["desc_act"]?.boolValue ?? false,
                                computeDType: dtype, weights: weights)
    }
}

/// A GPTQ or AWQ weight read as its dense [out, in] values in the compute dtype, any element range at
/// a time (`GPTQQuantization`'s formula, one rounding). A range of rows reads only the columns of
/// the packed tensors those outputs use (one read per stored row), and the groups, so the work and
/// the bytes read are proportional to the range.
public struct DequantizedGPTQ: TensorSource {
    public let name: String
    public let weight: GPTQQuantization.Weight
    public let dtype: DType
    let scheme: GPTQQuantization
    private let input: any TensorStore

    public var shape: [Int] { weight.shape }

    init(name: String, weight: GPTQQuantization.Weight, scheme: GPTQQuantization, in input: any TensorStore) {
        self.name = name
        self.weight = weight
        self.dtype = scheme.computeDType
        self.scheme = scheme
        self.input = input
    }

    /// Columns `columns` of every row of a stored row-major [rows, width] tensor of `size`-byte
    /// elements: rows × columns.count elements, row by row.
    private func columns(_ tensor: String, rows: Int, width: Int, _ columns: Range<Int>, size: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: rows * columns.count * size)
        try out.withUnsafeMutableBytes { o in
            for r in 0..<rows {
                try input.read(tensor, bytes: ((r * width + columns.lowerBound) * size)..<((r * width + columns.upperBound) * size),
                               into: o.baseAddress! + r * columns.count * size)
            }
        }
        return out
    }

    private static func words(_ bytes: [UInt8]) -> [UInt32] {
        bytes.withUnsafeBytes { b in (0..<(bytes.count / 4)).map { UInt32(littleEndian: b.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self)) } }
    }

    public func fill(_ range: Range<Int>, into destination: UnsafeMutableRawPointer) throws {
        let format = TensorData.format(dtype)!
        let elements = range.lowerBound / format.size..<(range.upperBound / format.size)
        guard !elements.isEmpty else { return }
        let (outputs, inputs) = (weight.shape[0], weight.shape[1])
        let bits = scheme.bits, per = scheme.perWord, mask = UInt32((1 << bits) - 1), groups = weight.groups
        // Outputs o0..<o1 (whole rows of W) and the packed words that hold them, c0..<c1.
        let o0 = elements.lowerBound / inputs, o1 = (elements.upperBound - 1) / inputs + 1
        let c0 = o0 / per, c1 = (o1 - 1) / per + 1
        let awq = scheme.packing == .awqGEMM
        let qweight = awq ? Self.words(try columns(weight.qweight, rows: inputs, width: outputs / per, c0..<c1, size: 4))
                          : Self.words(try columns(weight.qweight, rows: inputs / per, width: outputs, o0..<o1, size: 4))
        let zeros = Self.words(try columns(weight.qzeros, rows: groups, width: outputs / per, c0..<c1, size: 4))
        let scaleInfo = input.info(weight.scales)!
        let scaleBytes = try columns(weight.scales, rows: groups, width: outputs, o0..<o1, size: scaleInfo.dtype.bitSize / 8)
        var scales = [Float](repeating: 0, count: groups * (o1 - o0))
        scaleBytes.withUnsafeBytes { b in scales.withUnsafeMutableBufferPointer { FloatCodec.decode(b, format: TensorData.format(scaleInfo.dtype)!, into: $0) } }
        let size = scheme.groupSize == -1 ? inputs : scheme.groupSize
        var group = (0..<inputs).map { $0 / size }
        if let g = weight.gIdx {
            group = Self.words(try columns(g, rows: 1, width: inputs, 0..<inputs, size: 4)).map { Int(Int32(bitPattern: $0)) }
            if let i = group.indices.first(where: { group[$0] < 0 || group[$0] >= groups }) {
                throw LoRACoreError.invalidModule(module: g, detail: "g_idx[\(i)] = \(group[i]) is not one of the \(groups) groups of scales")
            }
        }
        let words = c1 - c0, span = o1 - o0
        func shift(_ o: Int) -> UInt32 { UInt32(awq ? 4 * GPTQQuantization.awqNibble[o % per] : bits * (o % per)) }
        var values = [Float](repeating: 0, count: elements.count)
        for e in elements {
            let o = e / inputs, i = e % inputs, g = group[i]
            var zeroWord = zeros[g * words + o / per - c0]
            if scheme.packing == .gptqV1 { zeroWord = zeroWord &+ scheme.v1ZeroOffset }
            let z = Int((zeroWord >> shift(o)) & mask)
            let q = awq ? Int((qweight[i * words + o / per - c0] >> shift(o)) & mask)
                        : Int((qweight[(i / per) * span + o - o0] >> UInt32(bits * (i % per))) & mask)
            values[e - elements.lowerBound] = scales[g * span + o - o0] * Float(q - z)
        }
        values.withUnsafeBufferPointer {
            FloatCodec.encode($0, format: format, into: UnsafeMutableRawBufferPointer(start: destination, count: elements.count * format.size))
        }
    }
}

/// Replaces every GPTQ/AWQ weight of a stream by its dense values (`DequantizedGPTQ`) under the
/// Linear's `.weight` name and drops its stored tensors; the side files lose `quantization_config`.
/// A stream of another scheme is returned as it is.
public struct DequantizeGPTQPass: Sendable {
    public init() {}

    /// - Throws: `GPTQQuantization.read`'s errors.
    public func apply(to stream: TensorStream) throws -> TensorStream {
        guard let q = try GPTQQuantization.read(stream) else { return stream }
        var tensors: [(name: String, source: any TensorSource)] = []
        for (name, source) in stream.tensors {
            if name.hasSuffix(".qweight"), let dense = q.weights.first(where: { $0.value.qweight == name }) {
                tensors.append((dense.key, DequantizedGPTQ(name: dense.key, weight: dense.value, scheme: q, in: stream)))
            } else if !q.companions.contains(name) {
                tensors.append((name, source))
            }
        }
        // Sorted as a model's tensors are (the dense names sort elsewhere than their qweight).
        tensors.sort { utf8Precedes($0.name, $1.name) }
        var side = stream.sideFiles
        side?.dropQuantization = true
        return stream.with(tensors, sideFiles: side)
    }
}
