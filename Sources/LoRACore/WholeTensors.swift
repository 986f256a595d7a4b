import Foundation
import LoRAKernels
import SafeTensors

/// Output tensors computed whole (see `OutputTensor.Kind.whole`), each computed once by the first
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
    func withBytes(of tensor: OutputTensor, plan: MergePlan, using isa: InstructionSet, delivering count: Int, _ body: (UnsafeRawBufferPointer) -> Void) throws {
        lock.lock()
        let entry = entries[tensor.info.name] ?? Entry(remaining: tensor.info.byteCount)
        entries[tensor.info.name] = entry
        lock.unlock()

        entry.lock.lock()
        defer { entry.lock.unlock() }
        if entry.bytes == nil {
            try MemoryBudget.check(elements: tensor.info.elementCount ?? 0, bytesPerElement: 8, what: "tensor '\(tensor.source)' (merged whole)")
            entry.bytes = try WholeTensors.compute(tensor, plan: plan, using: isa)
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

    /// All output bytes of `tensor`: its merged value (or the stored value, cast when the output
    /// dtype differs), rounded once to the output dtype.
    private static func compute(_ tensor: OutputTensor, plan: MergePlan, using isa: InstructionSet) throws -> [UInt8] {
        let t = tensor.info, name = tensor.source
        let outFormat = TensorData.format(t.dtype)
        switch plan.action(for: name) {
        case .copy:
            if t.dtype == plan.base.info(name)!.dtype { return Array(try plan.base.bytes(of: name)) }
            return TensorData.encode(try TensorData.floats(plan.base, name), format: outFormat!)
        case let .replace(ai, source):
            let ckpt = plan.adapters[ai].checkpoint
            if ckpt.info(source)!.dtype == t.dtype { return Array(try ckpt.bytes(of: source)) }
            guard let outFormat else {
                throw LoRACoreError.baseMismatch(module: t.name, detail: "replacement '\(source)' has dtype \(ckpt.info(source)!.dtype.rawValue), base has \(t.dtype.rawValue)")
            }
            return TensorData.encode(try TensorData.floats(ckpt, source), format: outFormat)
        case .merge, .bias:
            return TensorData.encode(try plan.mergedValue(name, using: isa)!, format: outFormat!)
        }
    }
}
