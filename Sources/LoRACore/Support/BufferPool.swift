import Foundation

/// Page buffers lent to computations running at once, at most `limit` bytes in all, and reused:
/// a computation takes one if it fits, or does without (more slowly) if not, so memory stays
/// bounded whatever the number of workers or the size of one tensor. Reuse spares the kernel
/// zeroing fresh pages for every tensor (a merge asks for one per weight).
final class BufferPool: @unchecked Sendable {
    // `@unchecked Sendable`: `idle` and `allocated` are touched only under `lock`.
    private let lock = NSLock()
    private var idle: [PageBuffer] = []
    /// Bytes of every buffer, idle or lent.
    private var allocated = 0
    let limit: Int

    init(limit: Int) { self.limit = limit }

    /// A buffer of at least `bytes` bytes (its contents undefined), or nil when it does not fit in
    /// the limit beside the buffers lent.
    /// - Throws: `LoRACoreError.invalidRequest` when the kernel refuses the mapping.
    func take(_ bytes: Int) throws -> PageBuffer? {
        lock.lock()
        defer { lock.unlock() }
        if let i = idle.indices.filter({ idle[$0].bytes.count >= bytes }).min(by: { idle[$0].bytes.count < idle[$1].bytes.count }) {
            return idle.remove(at: i)
        }
        // Idle buffers too small for this one make room for it, smallest first.
        idle.sort { $0.bytes.count > $1.bytes.count }
        while allocated + bytes > limit, let dropped = idle.popLast() { allocated -= dropped.bytes.count }
        guard allocated + bytes <= limit else { return nil }
        allocated += bytes
        return try PageBuffer(count: bytes)
    }

    /// Gives back a buffer `take` lent.
    func give(_ buffer: PageBuffer) {
        lock.lock()
        idle.append(buffer)
        lock.unlock()
    }
}
