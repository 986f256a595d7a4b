import SafeTensors

/// Every quantized base lora-tool reads, decoded as a merge reads it: bitsandbytes 4-bit
/// (`Dequantize4bitPass`) and the block-scaled schemes, FP8 (block-scaled or compressed-tensors)
/// and bitsandbytes int8 (`DequantizeBlockScaledPass`), MXFP4 experts (`DequantizeMXFP4Pass`) and GPTQ/AWQ codes
/// (`DequantizeGPTQPass`), each weight streamed
/// block by block, never a temporary model. A base quantized any other way is refused by its
/// `quant_method` rather than read as something else.
///
/// ```swift
/// let base = try DequantizePass().apply(to: TensorStream(model: Checkpoint(path: "model")))
/// ```
public struct DequantizePass: Sendable {
    /// Refuse a stream with nothing to dequantize (the `dequantize` command).
    public var required = false

    public init(required: Bool = false) { self.required = required }

    /// - Throws: `LoRACoreError.unsupportedAdapter` for an unsupported quant_method, the schemes'
    ///   errors for malformed weights, `.invalidRequest` with `required` and nothing to do.
    public func apply(to stream: TensorStream) throws -> TensorStream {
        try DequantizePass.refuseOtherQuantization(stream)
        let dense = try DequantizeGPTQPass().apply(to: try DequantizeMXFP4Pass().apply(to: try DequantizeBlockScaledPass().apply(to: try Dequantize4bitPass().apply(to: stream))))
        if required && dense === stream {
            throw LoRACoreError.invalidRequest("\(stream.path): no quantized weights to dequantize (bitsandbytes 4-bit or int8, fp8 with weight_scale_inv, compressed-tensors fp8, mxfp4, gptq, awq)")
        }
        return dense
    }

    /// Quantized bases other than these (HQQ, EETQ, …; compressed-tensors other than fp8 is refused by its reader) cannot be merged
    /// exactly yet: refused by their `quant_method` rather than guessed at.
    /// - Throws: `LoRACoreError.unsupportedAdapter` naming config.json.
    public static func refuseOtherQuantization(_ stream: TensorStream) throws {
        guard let dir = stream.sideFiles?.directory else { return }
        let config = dir + "/config.json"
        guard let root = try SideFiles.readJSON(config), let q = root["quantization_config"], q != .null else { return }
        let method = q["quant_method"]?.stringValue ?? "unknown"
        if method == "bitsandbytes", q["load_in_4bit"]?.boolValue == true || q["_load_in_4bit"]?.boolValue == true
            || q["load_in_8bit"]?.boolValue == true || q["_load_in_8bit"]?.boolValue == true { return }
        if method == "fp8" { return }
        if ["compressed-tensors", "mxfp4", "gptq", "awq"].contains(method) { return }  // its reader refuses, by name, every config it does not implement
        throw LoRACoreError.unsupportedAdapter(path: config, detail: "the base is quantized (quant_method \(method)); merging into it cannot be exact: merge into the unquantized model")
    }
}
