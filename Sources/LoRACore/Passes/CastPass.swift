import SafeTensors

/// Converts every float tensor of a stream to one dtype (`--dtype`), with one rounding: a tensor
/// that is computed in fp32 (a merge) is asked for the new dtype directly, a cast is re-cast from its
/// own input, anything else is wrapped in a `CastTensor`. Non-float tensors pass through, and so do
/// the tensors of a bitsandbytes 4-bit weight (codes, and its F32 absmax, quant maps and nested
/// tables, which bitsandbytes reads as F32 whatever the model's dtype) and the F32 scales of FP8
/// and int8 weights (`weight_scale_inv`, `SCB`). config.json's
/// `torch_dtype`/`dtype` follow.
///
/// ```swift
/// var stream = TensorStream(model: try Checkpoint(path: "base"))
/// stream = CastPass(.f16, context: try RunContext()).apply(to: stream)
/// ```
public struct CastPass: Sendable {
    public let dtype: OutputDType
    let context: RunContext

    public init(_ dtype: OutputDType, context: RunContext) {
        self.dtype = dtype
        self.context = context
    }

    public func apply(to stream: TensorStream) -> TensorStream {
        guard dtype != .keep else { return stream }
        var side = stream.sideFiles
        side?.dtype = dtype
        var quantized = BnbQuantization.quantizedWeights(names: stream.names).companions
        // The F32 scales of block-scaled weights (FP8 `weight_scale_inv`, int8 `SCB`), which their readers take as F32.
        for t in stream.tensors where t.name.hasSuffix(".weight") {
            if let scale = BlockScaledQuantization.scaleName(ofWeight: t.name, dtype: t.source.dtype) { quantized.insert(scale) }
            // compressed-tensors' scales (in the dtype its arithmetic was done in).
            if t.source.dtype == .float8E4M3 { quantized.insert(CompressedTensorsFP8.scaleName(ofWeight: t.name)) }
        }
        return stream.with(stream.tensors.map { t in
            quantized.contains(t.name) ? t : (t.name, CastPass.cast(t.source, named: t.name, to: dtype.output(for: t.source.dtype), context: context))
        }, sideFiles: side)
    }

    /// `source` as `dtype` with one rounding from its fp32 values; itself when it already is.
    static func cast(_ source: any TensorSource, named name: String, to dtype: DType, context: RunContext) -> any TensorSource {
        if source.dtype == dtype && !(source is CastTensor) { return source }
        if let merged = source as? MergedTensor { return merged.producing(dtype) }
        let input = (source as? CastTensor)?.input ?? source
        if input.dtype == dtype { return input }
        guard TensorData.format(input.dtype) != nil, TensorData.format(dtype) != nil else { return source }
        return CastTensor(name: name, input: input, dtype: dtype, context: context)
    }
}
