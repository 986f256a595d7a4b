import Foundation
import LoRAKernels
import SafeTensors

/// Merged tensors computed whole (see `MergedTensor.Kind.whole`), each computed once by the first
/// chunk that needs it and kept until every byte of it has been copied into its chunks.
///
/// `@unchecked Sendable`: the dictionaries are touched only under `lock`; a tensor's bytes are
/// computed under its own `Entry` lock, so two chunks never compute the same tensor twice and
/// chunks needing other tensors are not held up.
final class WholeTensors: @unchecked Sendable {
    private final class Entry: @unchecked Sendable {
        let lock = NSLock()
        var bytes: [UInt8]?
        var remaining: Int
        init(remaining: Int) { self.remaining = remaining }
    }

    private let lock = NSLock()
    private var entries: [String: Entry] = [:]

    /// Calls `body` with all output bytes of `tensor`, then counts `count` of them as delivered.
    /// - Throws: what computing the tensor throws.
    func withBytes(of tensor: MergedTensor, using isa: InstructionSet, delivering count: Int, _ body: (UnsafeRawBufferPointer) -> Void) throws {
        lock.lock()
        let entry = entries[tensor.info.name] ?? Entry(remaining: tensor.info.byteCount)
        entries[tensor.info.name] = entry
        lock.unlock()

        entry.lock.lock()
        defer { entry.lock.unlock() }
        if entry.bytes == nil {
            try MemoryBudget.check(elements: tensor.info.elementCount ?? 0, bytesPerElement: 8, what: "tensor '\(tensor.source)' (merged whole)")
            entry.bytes = try WholeTensors.compute(tensor, plan: tensor.plan, using: isa)
        }
        entry.bytes!.withUnsafeBytes(body)
        entry.remaining -= count
        if entry.remaining == 0 {
            entry.bytes = nil
            lock.lock()
            entries[tensor.info.name] = nil
            lock.unlock()
        }
    }

    /// All output bytes of `tensor`: its merged value rounded once to the output dtype.
    private static func compute(_ tensor: MergedTensor, plan: MergePlan, using isa: InstructionSet) throws -> [UInt8] {
        TensorData.encode(try plan.mergedValue(tensor.source, using: isa)!, format: TensorData.format(tensor.info.dtype)!)
    }
}
