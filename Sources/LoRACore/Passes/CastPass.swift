import SafeTensors

/// Converts every float tensor of a stream to one dtype (`--dtype`), with one rounding: a tensor
/// that is computed in fp32 (a merge) is asked for the new dtype directly, a cast is re-cast from its
/// own input, anything else is wrapped in a `CastTensor`. Non-float tensors (and 4-bit codes) pass
/// through. config.json's `torch_dtype`/`dtype` follow.
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
        return stream.with(stream.tensors.map { ($0.name, CastPass.cast($0.source, named: $0.name, to: dtype.output(for: $0.source.dtype), context: context)) },
                           sideFiles: side)
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
