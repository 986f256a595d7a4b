import Foundation

/// Bytes that computations running at once may hold beyond their working set, shared between
/// them: a computation takes its bytes if they fit, or does without (more slowly) if not, so memory
/// stays bounded whatever the number of workers or the size of one tensor.
final class ByteBudget: @unchecked Sendable {
    // `@unchecked Sendable`: `used` is touched only under `lock`.
    private let lock = NSLock()
    private var used = 0
    let limit: Int

    init(limit: Int) { self.limit = limit }

    /// Takes `bytes` when they fit in what is left; false leaves the budget as it was.
    func take(_ bytes: Int) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard bytes <= limit - used else { return false }
        used += bytes
        return true
    }

    /// Gives back bytes taken.
    func give(_ bytes: Int) {
        lock.lock()
        used -= bytes
        lock.unlock()
    }
}
