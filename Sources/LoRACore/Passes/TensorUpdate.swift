import LoRAKernels

/// Everything a merge does to one weight, loaded: the contributions of every adapter on it.
///
/// When all of them are LoRA they are one low-rank pair (`lowRank`: several adapters concatenated
/// as PEFT's `cat`), which the fused kernel merges straight into the output. Otherwise (LoHa, LoKr,
/// IA³, or a mix) they are steps applied in adapter order to the fp32 rows, each rounded to fp32,
/// and the result is rounded once to the output dtype.
struct TensorUpdate {
    enum Step {
        case lora(LoRAFactors)
        case other(any LoadedUpdate, weight: Float)
    }

    /// All contributions as one LoRA pair, when every one is LoRA.
    let lowRank: LoRAFactors?
    let steps: [Step]
    /// Columns of the weight's stored (flattened) view.
    let cols: Int

    init(_ cs: [MergePlan.Contribution], plan: MergePlan) throws {
        func lora(_ c: MergePlan.Contribution) throws -> LoRAFactors {
            try LoRAFactors(c.module, adapter: plan.adapters[c.adapter], weight: plan.weights[c.adapter])
        }
        if cs.allSatisfy({ $0.module.update == nil }) {
            let parts = try cs.map(lora)
            lowRank = parts.count == 1 ? parts[0] : LoRAFactors.concatenated(parts)
            steps = []
            cols = lowRank!.storedShape.cols
        } else {
            lowRank = nil
            steps = try cs.map { c in
                guard let u = c.module.update else { return .lora(try lora(c)) }
                return .other(try u.load(c.module, from: plan.adapters[c.adapter].checkpoint), weight: Float(plan.weights[c.adapter]))
            }
            cols = cs[0].module.transposed ? cs[0].module.outFeatures : cs[0].module.inFeatures
        }
    }

    private init(lowRank: LoRAFactors?, steps: [Step], cols: Int) {
        self.lowRank = lowRank
        self.steps = steps
        self.cols = cols
    }

    /// The same update with every step that needs all rows of its input (LyCORIS DoRA with norms
    /// per input column) resolved from `start` (the weight's starting value), streamed once a block
    /// of rows at a time through the steps before it. Memory: one block of rows.
    func resolvingColumns(from start: any TensorSource, using isa: InstructionSet) throws -> TensorUpdate {
        guard steps.contains(where: { if case let .other(u, _) = $0 { u.needsAllRows } else { false } }) else { return self }
        let rows = (start.elementCount) / max(1, cols)
        var resolved = steps
        var raw: [UInt8] = []
        for i in resolved.indices {
            guard case let .other(u, weight) = resolved[i], u.needsAllRows else { continue }
            let before = TensorUpdate(lowRank: nil, steps: Array(resolved[..<i]), cols: cols)
            let u2 = try u.resolvingColumns(rows: rows, cols: cols, weight: weight, input: { r0, count, block in
                try block.withUnsafeMutableBufferPointer { try start.floats((r0 * cols)..<((r0 + count) * cols), into: $0, raw: &raw) }
                try before.apply(toRows: r0, count: count, block: &block, using: isa)
            }, input64: nil)
            resolved[i] = .other(u2, weight: weight)
        }
        return TensorUpdate(lowRank: nil, steps: resolved, cols: cols)
    }

    /// The one LoHa this weight gets, when that is all (the fused LoHa kernel merges it straight
    /// into the output, as the fp32 rows path would).
    var hadamard: (factors: LoHa.Loaded, weight: Float)? {
        guard lowRank == nil, steps.count == 1, case let .other(u, weight) = steps[0], let h = u as? LoHa.Loaded else { return nil }
        return (h, weight)
    }

    /// Stored rows `[r0, r0 + count)` in `block` (fp32, `cols` wide) ← merged, in fp32.
    func apply(toRows r0: Int, count: Int, block: inout [Float], using isa: InstructionSet) throws {
        if let lowRank { return try lowRank.apply(toRows: r0, count: count, block: &block, using: isa) }
        for step in steps {
            switch step {
            case let .lora(f): try f.apply(toRows: r0, count: count, block: &block, using: isa)
            case let .other(u, weight): u.apply(toRows: r0, count: count, cols: cols, block: &block, weight: weight)
            }
        }
    }

    /// The whole weight `w` ← merged, in fp32 (DoRA on transposed storage needs it whole).
    func apply(to w: inout [Float], using isa: InstructionSet) throws {
        if let lowRank { return try lowRank.apply(to: &w, using: isa) }
        try apply(toRows: 0, count: w.count / max(1, cols), block: &w, using: isa)
    }
}
