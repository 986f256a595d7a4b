import SafeTensors

/// Applies a merge plan to the stream it was made over: every tensor the plan changes becomes a
/// `MergedTensor` (weights and biases, every dialect and variant) or its replacement, hand-written
/// layouts lose their LoRA tensors and get plain names, and everything else passes through. Tensors
/// keep their dtype (a replacement stored in another float dtype is cast once); `CastPass` changes it.
///
/// ```swift
/// let base = TensorStream(model: try Checkpoint(path: "base"))
/// let plan = try MergePlan(base: base, adapters: [try Adapter(path: "lora")], weights: [1], targets: nil)
/// let merged = try ApplyAdaptersPass(plan: plan, context: try RunContext()).apply(to: base)
/// ```
public struct ApplyAdaptersPass: Sendable {
    public let plan: MergePlan
    let state: MergeState

    public init(plan: MergePlan, context: RunContext) {
        self.plan = plan
        state = MergeState(plan: plan, context: context)
    }

    /// - Parameter stream: the stream `plan` was made over.
    /// - Throws: `LoRACoreError.baseMismatch` for a replacement whose dtype cannot become the base's.
    public func apply(to stream: TensorStream) throws -> TensorStream {
        precondition(stream === plan.base, "a merge plan applies to the stream it was made over")
        return stream.with(try plan.outputs.map { out in
            let base = stream.source(out.source)!
            switch plan.action(for: out.source) {
            case .copy:
                return (out.name, base)
            case let .replace(ai, tensor):
                let replacement = StoredTensor(plan.adapters[ai].checkpoint, tensor)!
                if replacement.dtype == base.dtype { return (out.name, replacement) }
                guard TensorData.format(replacement.dtype) != nil, TensorData.format(base.dtype) != nil else {
                    throw LoRACoreError.baseMismatch(module: out.name, detail: "replacement '\(tensor)' has dtype \(replacement.dtype.rawValue), base has \(base.dtype.rawValue)")
                }
                return (out.name, CastTensor(name: out.name, input: replacement, dtype: base.dtype, context: state.context))
            case .merge, .bias:
                return (out.name, MergedTensor(name: out.name, source: out.source, dtype: base.dtype, state: state))
            }
        }, sideFiles: stream.sideFiles)
    }
}
