import Foundation

/// An output (file or directory) built under a temporary name beside its destination and renamed
/// into place only when complete, so no half-written output ever carries the final name.
///
/// The staging name is `.NAME.lora-tool-partial-PID`; staging leftovers of a killed run are removed
/// by the next run that writes the same destination.
public final class AtomicOutput: @unchecked Sendable {
    // @unchecked: the paths are immutable; `committed` is only touched by the owning thread.
    public let destination: String
    public let staging: String
    public let isDirectory: Bool
    private var committed = false

    /// Prepares a staging location.
    /// - Parameters:
    ///   - destination: final path.
    ///   - isDirectory: whether the output is a directory (created empty now) or a single file.
    ///   - force: allow replacing an existing destination.
    /// - Throws: `SafeTensorsError.invalidWrite` when the destination exists (a non-empty directory or
    ///   a file) without `force`, or its parent is missing or not writable — before any work is done.
    public init(destination: String, isDirectory: Bool, force: Bool) throws {
        let url = URL(fileURLWithPath: destination).standardizedFileURL
        self.destination = url.path
        self.isDirectory = isDirectory
        let parent = url.deletingLastPathComponent().path
        let name = url.lastPathComponent
        let fm = FileManager.default
        var parentIsDir: ObjCBool = false
        guard fm.fileExists(atPath: parent, isDirectory: &parentIsDir), parentIsDir.boolValue else {
            throw SafeTensorsError.invalidWrite(path: destination, detail: "parent directory \(parent) does not exist")
        }
        guard access(parent, W_OK) == 0 else {
            throw SafeTensorsError.invalidWrite(path: destination, detail: "parent directory \(parent) is not writable")
        }
        var destIsDir: ObjCBool = false
        if fm.fileExists(atPath: destination, isDirectory: &destIsDir), !force {
            let empty = destIsDir.boolValue && ((try? fm.contentsOfDirectory(atPath: destination))?.isEmpty ?? false)
            if !empty || !isDirectory {
                throw SafeTensorsError.invalidWrite(path: destination, detail: "already exists; use --force to replace it")
            }
        }
        let stem = ".\(name).lora-tool-partial-"
        for stale in (try? fm.contentsOfDirectory(atPath: parent)) ?? [] where stale.hasPrefix(stem) {
            try? fm.removeItem(atPath: parent + "/" + stale)
        }
        staging = parent + "/" + stem + String(getpid())
        if isDirectory {
            do { try fm.createDirectory(atPath: staging, withIntermediateDirectories: false) } catch {
                throw SafeTensorsError.invalidWrite(path: destination, detail: "cannot create \(staging): \(error.localizedDescription)")
            }
        }
        AtomicOutput.register(staging)
    }

    deinit { if !committed { abandon() } }

    /// Path of a file inside a staging directory.
    public func path(for fileName: String) -> String { staging + "/" + fileName }

    /// Renames the staging output into place (replacing an old destination when forced) and syncs the parent.
    /// - Throws: `SafeTensorsError.io` when a rename fails.
    public func commit() throws {
        let fm = FileManager.default
        if isDirectory { fsyncPath(staging) }
        if fm.fileExists(atPath: destination) {
            let old = staging + ".old"
            guard rename(destination, old) == 0 else {
                throw SafeTensorsError.io(path: destination, operation: "rename", errno: errno)
            }
            guard rename(staging, destination) == 0 else {
                let e = errno
                _ = rename(old, destination)
                throw SafeTensorsError.io(path: destination, operation: "rename", errno: e)
            }
            try? fm.removeItem(atPath: old)
        } else {
            guard rename(staging, destination) == 0 else {
                throw SafeTensorsError.io(path: destination, operation: "rename", errno: errno)
            }
        }
        committed = true
        AtomicOutput.unregister(staging)
        fsyncPath((destination as NSString).deletingLastPathComponent)
    }

    /// Removes the staging output.
    public func abandon() {
        try? FileManager.default.removeItem(atPath: staging)
        AtomicOutput.unregister(staging)
    }

    private func fsyncPath(_ path: String) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd >= 0 { _ = fsync(fd); close(fd) }
    }

    // MARK: - Cleanup on SIGINT/SIGTERM

    nonisolated(unsafe) private static var live: [String] = []
    private static let lock = NSLock()

    private static func register(_ path: String) { lock.lock(); live.append(path); lock.unlock() }
    private static func unregister(_ path: String) { lock.lock(); live.removeAll { $0 == path }; lock.unlock() }

    /// Removes every staging output still in progress; called from the CLI's signal handler.
    public static func removeAllStaging() {
        lock.lock()
        let paths = live
        lock.unlock()
        for p in paths { try? FileManager.default.removeItem(atPath: p) }
    }
}
