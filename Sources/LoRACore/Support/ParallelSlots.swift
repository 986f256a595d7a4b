import Foundation

/// Results of work done in parallel, one slot per item.
///
/// `@unchecked Sendable`: each slot is written by exactly one worker and read by the coordinating
/// thread only after that worker signalled completion (or `concurrentPerform` returned).
final class ParallelSlots<Value>: @unchecked Sendable {
    private let slots: UnsafeMutablePointer<Result<Value, Error>?>
    private let count: Int

    init(count: Int) {
        self.count = count
        slots = .allocate(capacity: count)
        slots.initialize(repeating: nil, count: count)
    }

    deinit {
        slots.deinitialize(count: count)
        slots.deallocate()
    }

    func set(_ i: Int, _ r: Result<Value, Error>) { slots[i] = r }
    func get(_ i: Int) -> Result<Value, Error> { slots[i]! }
    /// Frees slot `i` once its value has been consumed.
    func clear(_ i: Int) { slots[i] = nil }
}

/// Hands out indices 0..<count to concurrent workers. `@unchecked Sendable`: guarded by `lock`.
final class ClaimCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var value = 0
    private let count: Int
    init(count: Int) { self.count = count }
    /// How many indices have been handed out.
    var claimed: Int { lock.lock(); defer { lock.unlock() }; return value }
    func next() -> Int? {
        lock.lock()
        defer { lock.unlock() }
        guard value < count else { return nil }
        value += 1
        return value - 1
    }
}
