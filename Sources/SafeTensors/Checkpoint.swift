import Foundation

/// A set of safetensors files read as one model: a single file, an index json with its shards, or a
/// directory of safetensors files.
///
/// Opening reads headers only. Tensor names are unique across files; lookups are by exact name.
///
/// Cost: linear in the total header size plus one O(n log n) sort of the names; memory about 250
/// bytes per tensor plus its name (its files' tables, a name → location table, the sorted names),
/// and while opening what `Header.parse` needs. Every file is opened with
/// `RegularFile.open`, so a FIFO, socket or device named like a checkpoint file is refused by name.
public final class Checkpoint: Sendable {
    /// What the user named.
    public let path: String
    /// The directory the files live in (for copying side files such as config.json).
    public let directory: String
    /// The index file, when the checkpoint is sharded through one.
    public let indexPath: String?
    /// Files in sorted name order.
    public let files: [SafeTensorsFile]
    private let location: [String: (file: Int, tensor: Int)]
    private let sortedNames: [String]

    /// The largest index json accepted, in bytes (a 500,000-tensor index is about 40 MB).
    public static let maximumIndexSize = 100_000_000

    /// Extensions of pickle formats that are refused without being opened.
    public static let pickleExtensions = ["bin", "pt", "pth", "ckpt", "pkl"]

    /// Opens `path`: a `.safetensors` (or zstd-compressed `.safetensors.zst`) file, a
    /// `*.safetensors.index.json`, or a directory holding either.
    /// In a directory an index wins over loose files; several indexes are an error unless one is
    /// `model.safetensors.index.json`.
    /// - Parameters:
    ///   - path: the file, index or directory.
    ///   - headerOnly: open `.zst` files for their headers only (see `SafeTensorsFile.init`): what
    ///     `inspect` needs. `bytes(of:)` then throws for tensors in those files.
    /// - Throws: `SafeTensorsError` for a missing path, pickle input, a malformed file, a FIFO,
    ///   socket, device or directory where a file should be, an index larger than
    ///   `maximumIndexSize`, or an index that disagrees with its shards (tensor listed but absent, in
    ///   two shards, shard missing).
    public init(path: String, headerOnly: Bool = false) throws {
        self.path = path
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw SafeTensorsError.unsupportedInput(path: path, detail: "no such file or directory")
        }
        var filePaths: [String] = []
        var index: String?
        if isDir.boolValue {
            directory = path
            let names = try Checkpoint.listDirectory(path)
            let indexes = names.filter { $0.hasSuffix(".safetensors.index.json") }
            if indexes.count == 1 {
                index = (path as NSString).appendingPathComponent(indexes[0])
            } else if indexes.count > 1 {
                guard indexes.contains("model.safetensors.index.json") else {
                    throw SafeTensorsError.unsupportedInput(
                        path: path, detail: "several index files (\(indexes.joined(separator: ", "))); name one")
                }
                index = (path as NSString).appendingPathComponent("model.safetensors.index.json")
            } else {
                filePaths = names.filter { $0.hasSuffix(".safetensors") || $0.hasSuffix(".safetensors.zst") }.map { (path as NSString).appendingPathComponent($0) }
                if filePaths.isEmpty {
                    let pickles = names.filter { Checkpoint.pickleExtensions.contains(($0 as NSString).pathExtension) }
                    if !pickles.isEmpty {
                        throw SafeTensorsError.unsupportedInput(
                            path: path, detail: "holds only pickle files (\(pickles.joined(separator: ", "))), which can run code when loaded; convert them to safetensors first")
                    }
                    throw SafeTensorsError.unsupportedInput(path: path, detail: "no .safetensors files in this directory")
                }
            }
        } else {
            directory = (path as NSString).deletingLastPathComponent.isEmpty ? "." : (path as NSString).deletingLastPathComponent
            let ext = (path as NSString).pathExtension
            if Checkpoint.pickleExtensions.contains(ext) {
                throw SafeTensorsError.unsupportedInput(
                    path: path, detail: "pickle files (.\(ext)) can run code when loaded and are never opened; convert to safetensors first")
            }
            if path.hasSuffix(".index.json") {
                index = path
            } else {
                filePaths = [path]
            }
        }
        indexPath = index
        var files: [SafeTensorsFile] = []
        var location: [String: (file: Int, tensor: Int)] = [:]
        if let index {
            let parsed = try ShardIndex.parse(RegularFile.readAll(index, limit: Checkpoint.maximumIndexSize), file: index)
            let shardNames = parsed.shardNames
            let dir = (index as NSString).deletingLastPathComponent
            var seenNames = Set<String>()
            for entry in parsed.weightMap where !seenNames.insert(entry.tensor).inserted {
                throw SafeTensorsError.invalidIndex(file: index, detail: "tensor '\(entry.tensor)' listed twice")
            }
            for shard in shardNames {
                let shardPath = (dir.isEmpty ? "." : dir) + "/" + shard
                var isLinkOutside = false
                if let dest = try? FileManager.default.destinationOfSymbolicLink(atPath: shardPath) {
                    let resolved = URL(fileURLWithPath: dest, relativeTo: URL(fileURLWithPath: dir.isEmpty ? "." : dir, isDirectory: true))
                        .standardizedFileURL.resolvingSymlinksInPath().deletingLastPathComponent().path
                    let base = URL(fileURLWithPath: dir.isEmpty ? "." : dir).standardizedFileURL.resolvingSymlinksInPath().path
                    // The Hugging Face cache's own layout: snapshots/REV/NAME -> ../../blobs/HASH.
                    let cacheBlobs = URL(fileURLWithPath: base).deletingLastPathComponent().lastPathComponent == "snapshots"
                        ? URL(fileURLWithPath: base).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("blobs").path : nil
                    isLinkOutside = resolved != base && resolved != cacheBlobs
                }
                if isLinkOutside {
                    throw SafeTensorsError.invalidIndex(file: index, detail: "shard '\(shard)' is a symbolic link out of the index's directory")
                }
                guard FileManager.default.fileExists(atPath: shardPath) else {
                    throw SafeTensorsError.invalidIndex(file: index, detail: "shard '\(shard)' listed in weight_map does not exist")
                }
                filePaths.append(shardPath)
            }
            for p in filePaths { files.append(try SafeTensorsFile(path: p, headerOnly: headerOnly)) }
            let fileNumber = Dictionary(uniqueKeysWithValues: shardNames.enumerated().map { ($1, $0) })
            for entry in parsed.weightMap {
                let f = fileNumber[entry.shard]!
                guard let t = files[f].position(of: entry.tensor) else {
                    throw SafeTensorsError.invalidIndex(
                        file: index, detail: "tensor '\(entry.tensor)' is listed in shard '\(entry.shard)' but that shard does not hold it")
                }
                location[entry.tensor] = (f, t)
            }
            for (f, file) in files.enumerated() {
                for t in file.tensors where location[t.name] == nil {
                    throw SafeTensorsError.invalidIndex(
                        file: index, detail: "tensor '\(t.name)' is in shard '\((file.path as NSString).lastPathComponent)' but not in weight_map")
                }
                for t in file.tensors where location[t.name]!.file != f {
                    throw SafeTensorsError.invalidIndex(
                        file: index, detail: "tensor '\(t.name)' is present in two shards")
                }
            }
        } else {
            for p in filePaths.sorted(by: utf8Precedes) { files.append(try SafeTensorsFile(path: p, headerOnly: headerOnly)) }
            for (f, file) in files.enumerated() {
                for (t, info) in file.tensors.enumerated() {
                    if let prior = location[info.name] {
                        throw SafeTensorsError.unsupportedInput(
                            path: path, detail: "tensor '\(info.name)' is present in both \(files[prior.file].path) and \(file.path)")
                    }
                    location[info.name] = (f, t)
                }
            }
        }
        self.files = files
        self.location = location
        sortedNames = location.keys.sorted(by: utf8Precedes)
    }

    private static func listDirectory(_ path: String) throws -> [String] {
        do { return try FileManager.default.contentsOfDirectory(atPath: path).sorted(by: utf8Precedes) } catch {
            throw SafeTensorsError.unsupportedInput(path: path, detail: "cannot list directory: \(error.localizedDescription)")
        }
    }

    /// All tensor names, sorted by UTF-8 bytes.
    public var names: [String] { sortedNames }

    /// Number of tensors.
    public var count: Int { location.count }

    /// The header entry of `name`, or nil.
    public func info(_ name: String) -> TensorInfo? {
        location[name].map { files[$0.file].tensors[$0.tensor] }
    }

    /// The file holding `name`, or nil.
    public func file(of name: String) -> SafeTensorsFile? { location[name].map { files[$0.file] } }

    /// The raw bytes of `name`, valid while the checkpoint is alive.
    /// - Throws: `SafeTensorsError.tensorNotFound`; `.unsupportedInput` when the file changed size
    ///   since it was opened (reading it would raise SIGBUS).
    public func bytes(of name: String) throws -> UnsafeRawBufferPointer {
        guard let loc = location[name] else { throw SafeTensorsError.tensorNotFound(tensor: name, in: path) }
        let file = files[loc.file]
        try file.checkUnchanged()
        return file.bytes(of: file.tensors[loc.tensor])
    }

    /// The file and absolute byte range of `name`'s data, for zero-copy transfers.
    public func location(of name: String) -> (file: SafeTensorsFile, offset: Int, count: Int)? {
        guard let loc = location[name] else { return nil }
        let f = files[loc.file], t = f.tensors[loc.tensor]
        return (f, f.dataStart + Int(t.dataOffsets.begin), t.byteCount)
    }

    /// Drops `name`'s mapped pages from the resident set (see `MappedFile.release`).
    public func release(_ name: String) {
        guard let loc = location[name] else { return }
        files[loc.file].release(files[loc.file].tensors[loc.tensor])
    }

    /// Metadata of the first file (the shards of one model carry the same metadata).
    public var metadata: [(key: String, value: String)]? { files.first?.metadata }
}
