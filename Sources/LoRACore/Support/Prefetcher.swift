import Foundation
import SafeTensors

/// Keeps the kernel reading a checkpoint's tensors ahead of the workers that consume them in order.
///
/// Why: `verify` reads a merged model that is usually not in the page cache (merge writes with direct
/// I/O). Faulting it in tensor by tensor leaves the disk idle while the workers compute; a thread that
/// asks for the next pieces (`MADV_WILLNEED`, 32 MiB at a time) keeps reads and computing overlapped.
/// It stays at most `window` bytes ahead of the tensors the workers have claimed, so the page cache
/// is not flooded with a whole model.
///
/// `@unchecked Sendable`: `stopped` is guarded by `lock`; everything else is immutable.
final class Prefetcher: @unchecked Sendable {
    private let lock = NSLock()
    private var stopped = false
    private let finished = DispatchGroup()
    static let piece = 32 << 20
    static let window = 256 << 20

    /// Starts reading `names` of `checkpoint` in order; `claimed()` returns how many of them the
    /// workers have started on.
    init(_ checkpoint: Checkpoint, names: [String], claimed: @escaping @Sendable () -> Int) {
        let locations = names.map { checkpoint.location(of: $0) }
        var offsets = [0]
        for l in locations { offsets.append(offsets.last! + (l?.count ?? 0)) }
        let starts = offsets
        finished.enter()
        Thread.detachNewThread { [self] in
            defer { finished.leave() }
            var i = 0, within = 0
            while i < locations.count, !isStopped {
                guard let loc = locations[i], within < loc.count else {
                    i += 1
                    within = 0
                    continue
                }
                let consumed = starts[min(claimed(), starts.count - 1)]
                if starts[i] + within - consumed > Prefetcher.window {
                    usleep(1000)
                    continue
                }
                let n = min(Prefetcher.piece, loc.count - within)
                loc.file.map.prefetch(offset: loc.offset + within, count: n)
                within += n
            }
        }
    }

    private var isStopped: Bool { lock.lock(); defer { lock.unlock() }; return stopped }

    /// Stops prefetching and waits for the thread (before the checkpoint may go away).
    func stop() {
        lock.lock()
        stopped = true
        lock.unlock()
        finished.wait()
    }
}
