import CFiles
import Foundation

/// An output (a directory, or one file) built in a locked staging directory beside its destination
/// and moved into place only when complete, without ever deleting anything lora-tool did not write.
///
/// The rules, in order:
/// - The path must pass `OutputPath.validate` (not blank, `.`, `..`, `/`, home, or an ancestor of
///   the working directory).
/// - Without `force` an existing destination is refused, except an empty directory. With `force`
///   only an output lora-tool wrote is replaced: a directory carrying the `.lora-tool` marker whose
///   every entry the marker lists (or, for outputs of versions before the marker, a directory of
///   regular files with names lora-tool writes), or a safetensors or GGUF file. Anything else is refused
///   with a list of what is in the way.
/// - The staging directory `.NAME.lora-tool-staging` is created under a unique name, locked with
///   `flock`, then renamed into place, so a second writer of the same output sees a locked staging
///   directory and refuses; a staging directory nobody holds is a leftover of a killed run and is
///   removed (only when it holds regular files alone).
/// - `commit` decides again: a destination that appeared or changed while the command ran is left
///   alone and the finished output is kept as `NAME.lora-tool-PID` (the error says where). A
///   replacement swaps old and new in one `renameat2(RENAME_EXCHANGE)`, so no instant has neither;
///   on file systems without it, the old output is first renamed to `.NAME.lora-tool-old-PID`, which
///   the next run renames back if the destination is missing (and reports if it is not).
/// - SIGINT/SIGTERM: `InterruptCleanup` removes every registered staging directory on a normal
///   thread, never inside a signal handler; commits and cleanup exclude each other.
public final class AtomicOutput: @unchecked Sendable {
    // @unchecked: the paths are immutable; `committed`, `lockDescriptor` and `notes` are touched by
    // the owning thread only, and the registry is guarded by `AtomicOutput.registryLock`.

    /// Name of the marker file every output directory gets: JSON listing the files lora-tool wrote.
    public static let markerName = ".lora-tool"

    public let destination: String
    public let isDirectory: Bool
    /// The locked staging directory beside the destination.
    public let stagingDirectory: String
    /// Where the output is written: the staging directory itself, or the file inside it.
    public let staging: String
    /// Things the user should know that are not errors (an interrupted replace recovered, a side
    /// file linked from outside its model…); also collected for `takeNotes`.
    public var notes: [String] = [] {
        didSet {
            AtomicOutput.noteLock.lock()
            AtomicOutput.pendingNotes += notes.dropFirst(oldValue.count)
            AtomicOutput.noteLock.unlock()
        }
    }

    private let parent: String
    private let name: String
    private let force: Bool
    private var existing: Existing?
    private var lockDescriptor: Int32 = -1
    private var committed = false

    /// What was at the destination when the command started and may be replaced at commit.
    private enum Existing: Equatable {
        case emptyDirectory(FileID)
        case output(FileID)
    }

    /// Prepares the locked staging location, after refusing every destination it may not replace.
    /// - Parameters:
    ///   - destination: final path.
    ///   - isDirectory: whether the output is a directory or a single file.
    ///   - force: allow replacing an output lora-tool wrote.
    /// - Throws: `SafeTensorsError.unsafeOutput` for paths no command may write, `.outputExists`
    ///   when the destination may not be replaced, `.outputBusy` when another process is writing
    ///   it, `.invalidWrite` when the parent is missing or not writable — all before any work.
    public init(destination: String, isDirectory: Bool, force: Bool) throws {
        try OutputPath.validate(destination)
        let url = URL(fileURLWithPath: destination).standardizedFileURL
        self.destination = url.path
        self.isDirectory = isDirectory
        self.force = force
        parent = url.deletingLastPathComponent().path
        name = url.lastPathComponent
        stagingDirectory = parent + "/." + name + ".lora-tool-staging"
        staging = isDirectory ? stagingDirectory : stagingDirectory + "/" + name
        var st = stat()
        guard stat(parent, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else {
            throw SafeTensorsError.invalidWrite(path: destination, detail: "parent directory \(parent) does not exist")
        }
        guard access(parent, W_OK) == 0 else {
            throw SafeTensorsError.invalidWrite(path: destination, detail: "parent directory \(parent) is not writable")
        }
        existing = try classifyDestination()
        try acquireStaging()
        do {
            try recoverInterruptedReplace()
        } catch {
            abandon()
            throw error
        }
    }

    deinit { if !committed { abandon() } }

    /// Path of a file inside a staging directory.
    public func path(for fileName: String) -> String { staging + "/" + fileName }

    // MARK: - Deciding what may be replaced

    /// - Throws: `.outputExists` when the destination exists and may not be replaced.
    private func classifyDestination() throws -> Existing? {
        var st = stat()
        guard lstat(destination, &st) == 0 else {
            if errno == ENOENT { return nil }
            throw SafeTensorsError.io(path: destination, operation: "stat", errno: errno)
        }
        let id = FileID(st)
        switch st.st_mode & S_IFMT {
        case S_IFLNK:
            throw SafeTensorsError.outputExists(path: destination, detail: "is a symbolic link; lora-tool replaces only outputs it wrote itself")
        case S_IFDIR:
            guard isDirectory else {
                throw SafeTensorsError.outputExists(path: destination, detail: "is a directory, and this output is a file")
            }
            let entries = try AtomicOutput.entries(of: destination)
            if entries.isEmpty { return .emptyDirectory(id) }
            guard force else {
                throw SafeTensorsError.outputExists(path: destination, detail: "already exists; use --force to replace an output lora-tool wrote")
            }
            let foreign = AtomicOutput.foreignEntries(of: destination, entries: entries)
            guard foreign.isEmpty else {
                let shown = foreign.prefix(8).map { "'\($0)'" }.joined(separator: ", ") + (foreign.count > 8 ? " and \(foreign.count - 8) more" : "")
                throw SafeTensorsError.outputExists(
                    path: destination,
                    detail: "holds what lora-tool did not write (\(shown)); --force replaces only lora-tool's own outputs: remove them yourself or choose another output")
            }
            return .output(id)
        case S_IFREG:
            guard !isDirectory else {
                throw SafeTensorsError.outputExists(path: destination, detail: "is a file, and this output is a directory")
            }
            guard force else {
                throw SafeTensorsError.outputExists(path: destination, detail: "already exists; use --force to replace it")
            }
            guard AtomicOutput.isReplaceableFile(destination) else {
                throw SafeTensorsError.outputExists(path: destination, detail: "is not a safetensors or GGUF file; --force replaces only lora-tool's own outputs")
            }
            return .output(id)
        default:
            throw SafeTensorsError.outputExists(path: destination, detail: "is not a regular file or directory")
        }
    }

    /// The names lora-tool's outputs hold, for directories written before the marker existed.
    static func isKnownOutputName(_ name: String) -> Bool {
        let exact: Set<String> = [
            "adapter_config.json", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
            "chat_template.jinja", "preprocessor_config.json", markerName,
        ]
        return exact.contains(name) || name.hasSuffix(".safetensors") || name.hasSuffix(".safetensors.zst")
            || name.hasSuffix(".safetensors.index.json")
    }

    /// Entries of `directory` that lora-tool did not write: everything not listed in its marker (or,
    /// without a marker, not a lora-tool output name), and anything that is not a regular file.
    static func foreignEntries(of directory: String, entries: [String]) -> [String] {
        let listed = markerFiles(in: directory)
        if listed == nil, !entries.contains(where: { $0.hasSuffix(".safetensors") || $0.hasSuffix(".safetensors.zst") }) {
            return entries
        }
        return entries.filter { entry in
            var st = stat()
            guard lstat(directory + "/" + entry, &st) == 0 else { return true }
            if (st.st_mode & S_IFMT) == S_IFDIR, let listed {
                // A pipeline output's component folder: lora-tool's when it holds only regular files the marker lists.
                guard let inner = try? AtomicOutput.entries(of: directory + "/" + entry), !inner.isEmpty else { return true }
                return inner.contains { f in
                    var fs = stat()
                    return lstat(directory + "/" + entry + "/" + f, &fs) != 0 || (fs.st_mode & S_IFMT) != S_IFREG || !listed.contains(entry + "/" + f)
                }
            }
            guard (st.st_mode & S_IFMT) == S_IFREG else { return true }
            if let listed { return entry != markerName && !listed.contains(entry) }
            return !isKnownOutputName(entry)
        }
    }

    /// The files a directory's marker lists, or nil when it has no readable marker.
    static func markerFiles(in directory: String) -> Set<String>? {
        let path = directory + "/" + markerName
        var st = stat()
        guard lstat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, st.st_size < 1 << 20,
              let data = FileManager.default.contents(atPath: path),
              let root = try? JSONParser.parse(Array(data)), let files = root["files"]?.arrayValue else { return nil }
        return Set(files.compactMap(\.stringValue))
    }

    /// Whether a single-file output may be replaced with `--force`: a file of a kind lora-tool writes
    /// (one file cannot carry the marker), named and starting as one.
    static func isReplaceableFile(_ path: String) -> Bool { isSafeTensorsFile(path) || isGGUFFile(path) }

    /// Whether `path` is named `.gguf` and starts with the GGUF magic and a version lora-tool writes.
    static func isGGUFFile(_ path: String) -> Bool {
        guard path.hasSuffix(".gguf") else { return false }
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var head = [UInt8](repeating: 0, count: 8)
        guard pread(fd, &head, 8, 0) == 8 else { return false }
        return head == [0x47, 0x47, 0x55, 0x46, 3, 0, 0, 0]  // "GGUF", version 3 little-endian
    }

    /// Whether `path` starts like a safetensors file (a length prefix and a JSON object) or a zstd frame.
    static func isSafeTensorsFile(_ path: String) -> Bool {
        guard path.hasSuffix(".safetensors") || path.hasSuffix(".safetensors.zst") else { return false }
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var head = [UInt8](repeating: 0, count: 9)
        guard pread(fd, &head, 9, 0) == 9 else { return false }
        if path.hasSuffix(".zst") { return head[0..<4] == [0x28, 0xB5, 0x2F, 0xFD] }
        return head[8] == UInt8(ascii: "{")
    }

    /// Sorted entries of a directory.
    static func entries(of directory: String) throws -> [String] {
        do {
            return try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
        } catch {
            throw SafeTensorsError.io(path: directory, operation: "list", errno: (error as NSError).code == 0 ? EIO : Int32((error as NSError).code))
        }
    }

    // MARK: - The staging directory and its lock

    private func acquireStaging() throws {
        AtomicOutput.registryLock.lock()
        defer { AtomicOutput.registryLock.unlock() }
        removeStaleFreshDirectories()
        AtomicOutput.sequence += 1
        let fresh = parent + "/." + name + ".lora-tool-new-\(getpid())-\(AtomicOutput.sequence)"
        guard mkdir(fresh, 0o755) == 0 else {
            throw SafeTensorsError.outputIO(path: fresh, operation: "create the staging directory", errno: errno)
        }
        AtomicOutput.live.append(fresh)
        let fd = open(fresh, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0, lora_lock_exclusive(fd) == 0 else {
            let e = errno
            if fd >= 0 { close(fd) }
            rmdir(fresh)
            AtomicOutput.live.removeAll { $0 == fresh }
            throw SafeTensorsError.outputIO(path: fresh, operation: "lock the staging directory", errno: e)
        }
        var failure: Error?
        for _ in 0..<4 {
            var r = lora_rename_noreplace(fresh, stagingDirectory)
            if r == EINVAL || r == ENOSYS {
                var st = stat()
                r = lstat(stagingDirectory, &st) == 0 ? EEXIST : (rename(fresh, stagingDirectory) == 0 ? 0 : errno)
            }
            if r == 0 {
                lockDescriptor = fd
                AtomicOutput.live.removeAll { $0 == fresh }
                AtomicOutput.live.append(stagingDirectory)
                return
            }
            guard r == EEXIST || r == ENOTEMPTY else {
                failure = SafeTensorsError.outputIO(path: stagingDirectory, operation: "rename the staging directory", errno: r)
                break
            }
            do { try removeStaleStaging(stagingDirectory) } catch {
                failure = error
                break
            }
        }
        close(fd)
        rmdir(fresh)
        AtomicOutput.live.removeAll { $0 == fresh }
        throw failure ?? SafeTensorsError.outputBusy(path: destination, staging: stagingDirectory)
    }

    /// Staging directories of killed runs that died before renaming theirs into place
    /// (`.NAME.lora-tool-new-PID-N`, or `-removing-PID` mid-cleanup), when nobody holds them and
    /// the process named in them is gone: another writer's directory exists, unlocked, between its
    /// `mkdir` and its `flock`, and must not be taken for a leftover then.
    private func removeStaleFreshDirectories() {
        let prefixes = ["." + name + ".lora-tool-new-", "." + name + ".lora-tool-staging.lora-tool-removing-"]
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: parent)) ?? [] {
            guard let prefix = prefixes.first(where: entry.hasPrefix), !AtomicOutput.ownerIsRunning(entry, after: prefix) else { continue }
            try? removeStaleStaging(parent + "/" + entry)
        }
    }

    /// Whether the process whose id follows `prefix` in `entry` is another process still running.
    static func ownerIsRunning(_ entry: String, after prefix: String) -> Bool {
        guard let text = entry.dropFirst(prefix.count).split(separator: "-").first, let pid = Int32(text), pid > 0, pid != getpid() else { return false }
        return kill(pid, 0) == 0 || errno == EPERM
    }

    /// Removes a staging directory that no live process holds (a killed run's leftover).
    /// - Throws: `.outputBusy` when another process holds it; `.outputExists` when it holds
    ///   anything but regular files (then it is not lora-tool's and is left alone).
    private func removeStaleStaging(_ directory: String) throws {
        let fd = open(directory, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else {
            if errno == ENOENT { return }
            throw SafeTensorsError.outputExists(path: directory, detail: "is in the way of lora-tool's staging directory and is not one")
        }
        defer { close(fd) }
        let r = lora_lock_exclusive(fd)
        if r == EWOULDBLOCK { throw SafeTensorsError.outputBusy(path: destination, staging: directory) }
        guard r == 0 else { throw SafeTensorsError.outputIO(path: directory, operation: "lock", errno: r) }
        try AtomicOutput.removeFlatDirectory(directory)
    }

    /// Removes a directory that holds regular files only (lora-tool's own staging or output), or,
    /// with `folders`, also folders of regular files one level down (a replaced diffusers pipeline
    /// output's `unet/`, `tokenizer/`, …, which its marker listed file by file).
    /// - Throws: `.outputExists` when it holds anything else, which is then left in place.
    public static func removeFlatDirectory(_ directory: String, folders allowFolders: Bool = false) throws {
        let entries = try entries(of: directory)
        var folders: [(name: String, files: [String])] = []
        for entry in entries {
            var st = stat()
            guard lstat(directory + "/" + entry, &st) == 0 else { continue }
            if allowFolders, (st.st_mode & S_IFMT) == S_IFDIR {
                let inner = try AtomicOutput.entries(of: directory + "/" + entry)
                for f in inner {
                    var fs = stat()
                    if lstat(directory + "/" + entry + "/" + f, &fs) == 0, (fs.st_mode & S_IFMT) != S_IFREG {
                        throw SafeTensorsError.outputExists(path: directory, detail: "holds '\(entry)/\(f)', which is not a regular file; lora-tool did not write it and leaves the directory alone")
                    }
                }
                folders.append((entry, inner))
            } else if (st.st_mode & S_IFMT) != S_IFREG {
                throw SafeTensorsError.outputExists(path: directory, detail: "holds '\(entry)', which is not a regular file; lora-tool did not write it and leaves the directory alone")
            }
        }
        for folder in folders {
            for f in folder.files where unlink(directory + "/" + folder.name + "/" + f) != 0 && errno != ENOENT {
                throw SafeTensorsError.outputIO(path: directory + "/" + folder.name + "/" + f, operation: "remove", errno: errno)
            }
            if rmdir(directory + "/" + folder.name) != 0 && errno != ENOENT {
                throw SafeTensorsError.outputIO(path: directory + "/" + folder.name, operation: "remove", errno: errno)
            }
        }
        for entry in entries where !folders.contains(where: { $0.name == entry }) && unlink(directory + "/" + entry) != 0 && errno != ENOENT {
            throw SafeTensorsError.outputIO(path: directory + "/" + entry, operation: "remove", errno: errno)
        }
        if rmdir(directory) != 0 && errno != ENOENT {
            throw SafeTensorsError.outputIO(path: directory, operation: "remove", errno: errno)
        }
    }

    /// A replace interrupted between its two renames (file systems without RENAME_EXCHANGE) left
    /// the old output as `.NAME.lora-tool-old-PID`: put it back when the destination is missing,
    /// otherwise leave it and say where it is. Never deleted.
    private func recoverInterruptedReplace() throws {
        let prefix = "." + name + ".lora-tool-old-"
        let leftovers = ((try? FileManager.default.contentsOfDirectory(atPath: parent)) ?? []).filter { $0.hasPrefix(prefix) }.sorted()
        for leftover in leftovers {
            let path = parent + "/" + leftover
            var st = stat()
            if lstat(destination, &st) != 0, errno == ENOENT, lora_rename_noreplace(path, destination) == 0 || rename(path, destination) == 0 {
                notes.append("recovered \(destination) from \(path), left by a replace that was interrupted")
                existing = try classifyDestination()
            } else {
                notes.append("\(path) holds an earlier output left by an interrupted replace; remove it when it is no longer needed")
            }
        }
    }

    // MARK: - Commit

    /// Moves the finished output into place: atomically, never over anything it was not allowed to
    /// replace when the command started, and never leaving neither the old nor the new output.
    /// - Throws: `.outputAppeared` (the finished output is kept beside it, the error says where)
    ///   when the destination appeared or changed meanwhile; `.outputIO` when a rename fails.
    public func commit() throws {
        AtomicOutput.registryLock.lock()
        defer { AtomicOutput.registryLock.unlock() }
        if isDirectory { try writeMarker() }
        fsyncPath(stagingDirectory)
        var st = stat()
        if lstat(destination, &st) != 0 {
            var r = lora_rename_noreplace(staging, destination)
            if r == EINVAL || r == ENOSYS {
                r = lstat(destination, &st) == 0 ? EEXIST : (rename(staging, destination) == 0 ? 0 : errno)
            }
            if r == EEXIST || r == ENOTEMPTY { throw keepAside() }
            guard r == 0 else { throw SafeTensorsError.outputIO(path: destination, operation: "rename into place", errno: r) }
        } else {
            guard let approved = existing, try stillReplaceable(FileID(st), approved) else { throw keepAside() }
            try replace(approved)
        }
        committed = true
        if !isDirectory { rmdir(stagingDirectory) }
        AtomicOutput.live.removeAll { $0 == stagingDirectory }
        if lockDescriptor >= 0 { close(lockDescriptor); lockDescriptor = -1 }
        fsyncPath(parent)
    }

    /// Commits single-file outputs that are parts of one output (a split GGUF model's shards), all
    /// or none: every destination is first checked as `commit` checks it, and when one appeared or
    /// changed meanwhile its output is kept aside (`.outputAppeared`, as `commit` does) and none is
    /// moved into place (the others are removed when released, as on any error). Then each is
    /// committed in order; when one of those renames fails, the ones already in place are removed
    /// again (only while their destination is still the file this process wrote), so no final name
    /// is left holding part of the output. An old output one of them replaced is not restored.
    /// - Throws: `.outputAppeared`, `.outputIO`, as `commit`.
    public static func commitAll(_ outputs: [AtomicOutput]) throws {
        for output in outputs {
            var st = stat()
            guard lstat(output.destination, &st) == 0 else { continue }
            guard let approved = output.existing, try output.stillReplaceable(FileID(st), approved) else {
                AtomicOutput.registryLock.lock()
                defer { AtomicOutput.registryLock.unlock() }
                throw output.keepAside()
            }
        }
        var placed: [(destination: String, id: FileID)] = []
        do {
            for output in outputs {
                var st = stat()
                guard lstat(output.staging, &st) == 0 else {
                    throw SafeTensorsError.outputIO(path: output.staging, operation: "stat", errno: errno)
                }
                try output.commit()
                placed.append((output.destination, FileID(st)))
            }
        } catch {
            for (destination, id) in placed {
                var st = stat()
                if lstat(destination, &st) == 0, FileID(st) == id { unlink(destination) }
            }
            throw error
        }
    }

    /// Whether the destination now is what was approved at the start and still may be replaced.
    private func stillReplaceable(_ id: FileID, _ approved: Existing) throws -> Bool {
        switch approved {
        case let .emptyDirectory(expected):
            guard id == expected else { return false }
            return try AtomicOutput.entries(of: destination).isEmpty
        case let .output(expected):
            guard id == expected else { return false }
            if !isDirectory { return AtomicOutput.isReplaceableFile(destination) }
            return AtomicOutput.foreignEntries(of: destination, entries: try AtomicOutput.entries(of: destination)).isEmpty
        }
    }

    /// Swaps the new output in and removes the approved old one.
    private func replace(_ approved: Existing) throws {
        let expected: FileID
        switch approved { case let .emptyDirectory(id), let .output(id): expected = id }
        // Lock the old directory too: once swapped it sits at the staging name, which must stay held.
        let oldLock = isDirectory ? open(destination, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) : -1
        defer { if oldLock >= 0 { close(oldLock) } }
        if oldLock >= 0, lora_lock_exclusive(oldLock) == EWOULDBLOCK {
            throw SafeTensorsError.outputBusy(path: destination, staging: destination)
        }
        let r = lora_rename_exchange(staging, destination)
        var old = staging
        if r == 0 {
            var st = stat()
            guard lstat(staging, &st) == 0, FileID(st) == expected else {
                // Something else was swapped out: put it back and keep ours aside.
                _ = lora_rename_exchange(staging, destination)
                throw keepAside()
            }
        } else if r == EINVAL || r == ENOSYS {
            old = parent + "/." + name + ".lora-tool-old-\(getpid())"
            guard rename(destination, old) == 0 else {
                throw SafeTensorsError.outputIO(path: destination, operation: "rename the old output aside", errno: errno)
            }
            guard rename(staging, destination) == 0 else {
                let e = errno
                _ = rename(old, destination)
                throw SafeTensorsError.outputIO(path: destination, operation: "rename into place", errno: e)
            }
        } else {
            throw SafeTensorsError.outputIO(path: destination, operation: "swap with the old output", errno: r)
        }
        if isDirectory {
            // Checked at the start and again just now: its entries are lora-tool's own files.
            try AtomicOutput.removeFlatDirectory(old, folders: true)
        } else {
            unlink(old)
        }
    }

    /// Moves the finished output to `NAME.lora-tool-PID` beside the destination and returns the
    /// error that says so.
    private func keepAside() -> Error {
        let kept = parent + "/" + name + ".lora-tool-\(getpid())"
        if lora_rename_noreplace(staging, kept) == 0 || rename(staging, kept) == 0 {
            committed = true
            if !isDirectory { rmdir(stagingDirectory) }
            AtomicOutput.live.removeAll { $0 == stagingDirectory }
            if lockDescriptor >= 0 { close(lockDescriptor); lockDescriptor = -1 }
            return SafeTensorsError.outputAppeared(path: destination, kept: kept)
        }
        return SafeTensorsError.outputAppeared(path: destination, kept: staging)
    }

    /// The marker: which files of this directory lora-tool wrote (so `--force` may replace them).
    private func writeMarker() throws {
        // Files one level down too: a pipeline output's component folders (`unet/diffusion_pytorch_model.safetensors`).
        let files = try AtomicOutput.entries(of: staging).filter { $0 != AtomicOutput.markerName }.flatMap { entry -> [String] in
            var st = stat()
            guard lstat(staging + "/" + entry, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else { return [entry] }
            return try AtomicOutput.entries(of: staging + "/" + entry).map { entry + "/" + $0 }
        }
        let json = JSONValue.object([
            ("written_by", .string("lora-tool")),
            ("files", .array(files.map { .string($0) })),
        ])
        let path = staging + "/" + AtomicOutput.markerName
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw SafeTensorsError.outputIO(path: path, operation: "create", errno: errno) }
        defer { close(fd) }
        let bytes = Array((JSONWriter.pretty(json) + "\n").utf8)
        guard write(fd, bytes, bytes.count) == bytes.count else {
            throw SafeTensorsError.outputIO(path: path, operation: "write", errno: errno)
        }
        _ = fsync(fd)
    }

    /// Removes the staging output (called on errors; the signal path uses `abandonAll`).
    public func abandon() {
        AtomicOutput.registryLock.lock()
        defer { AtomicOutput.registryLock.unlock() }
        // Only an instance holding the staging lock owns the directory: a failed init (another
        // process's, or this one's, staging directory at the same name) must not touch it.
        guard !committed, lockDescriptor >= 0 else { return }
        if AtomicOutput.live.contains(stagingDirectory) {
            try? FileManager.default.removeItem(atPath: stagingDirectory)
            AtomicOutput.live.removeAll { $0 == stagingDirectory }
        }
        committed = true
        if lockDescriptor >= 0 { close(lockDescriptor); lockDescriptor = -1 }
    }

    private func fsyncPath(_ path: String) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd >= 0 { _ = fsync(fd); close(fd) }
    }

    nonisolated(unsafe) private static var pendingNotes: [String] = []
    private static let noteLock = NSLock()

    /// The notes of every output of this process not yet taken, in order: the CLI prints them.
    public static func takeNotes() -> [String] {
        noteLock.lock()
        defer { noteLock.unlock() }
        let taken = pendingNotes
        pendingNotes = []
        return taken
    }

    // MARK: - Cleanup on SIGINT/SIGTERM

    nonisolated(unsafe) private static var live: [String] = []
    nonisolated(unsafe) private static var sequence = 0
    private static let registryLock = NSLock()

    /// Removes every staging output of this process, then keeps the registry locked
    /// so no commit can start: called once, on a normal thread, just before the process dies of a
    /// signal. Each is first renamed aside so threads still writing cannot add files to it.
    public static func abandonAllForExit() {
        registryLock.lock()
        for path in live {
            let trash = path + ".lora-tool-removing-\(getpid())"
            let target = rename(path, trash) == 0 ? trash : path
            try? FileManager.default.removeItem(atPath: target)
        }
        live.removeAll()
    }
}

/// Device and inode: what a path named when it was checked, compared again before replacing it.
struct FileID: Equatable {
    let device: UInt64
    let inode: UInt64
    init(_ st: stat) {
        device = UInt64(st.st_dev)
        inode = UInt64(st.st_ino)
    }
}
