import Foundation
import LoRAKernels

/// Each merged tensor's update (LoRA factors, or LoHa/LoKr/IA³ steps), loaded once and shared by the workers computing its blocks,
/// and the instruction set this merge runs the kernel with.
/// `@unchecked Sendable`: the dictionary is only touched under `lock`; factors are immutable.
final class FactorCache: @unchecked Sendable {
    private let plan: MergePlan
    private let lock = NSLock()
    private var loaded: [String: TensorUpdate] = [:]
    /// The merge kernel's instruction set for every tensor of this merge (all give the same bits).
    let instructionSet: InstructionSet

    init(plan: MergePlan, instructionSet: InstructionSet) {
        self.plan = plan
        self.instructionSet = instructionSet
    }

    func factors(for name: String, contributions cs: [MergePlan.Contribution]) throws -> TensorUpdate {
        lock.lock()
        defer { lock.unlock() }
        if let f = loaded[name] { return f }
        // A step needing every row (LyCORIS DoRA per input column) is resolved here, under the lock:
        // workers on other tensors wait for this one pass over the weight.
        let f = try TensorUpdate(cs, plan: plan).resolvingColumns(from: plan.startingSource(of: name), using: instructionSet)
        loaded[name] = f
        return f
    }

    func remove(_ name: String) {
        lock.lock()
        loaded[name] = nil
        lock.unlock()
    }
}
