import Foundation
import SafeTensors

/// What one part of a partitioned merge wrote: `part.json` in its part directory.
///
/// ```json
/// {"format": "lora-tool part 1", "part": 0, "parts": 4, "fingerprint": "…",
///  "shards": ["model-00001-of-00009.safetensors", …],
///  "files": [{"name": "model-00003-of-00009.safetensors", "bytes": 123, "sha256": "…"}, …]}
/// ```
/// `shards` is the whole plan (the same in every part); `files` is what this part wrote: its shards
/// and, for part 0, the index and the side files.
public struct PartManifest: Sendable, Equatable {
    public static let fileName = "part.json"
    static let format = "lora-tool part 1"

    public struct File: Sendable, Equatable {
        public var name: String
        public var bytes: Int
        public var sha256: String
    }

    public var part: PartSelection
    public var fingerprint: String
    /// Every shard of the output, in plan order.
    public var shards: [String]
    /// The files this part wrote, in the order written.
    public var files: [File]

    public init(part: PartSelection, fingerprint: String, shards: [String], files: [File]) {
        self.part = part
        self.fingerprint = fingerprint
        self.shards = shards
        self.files = files
    }

    public var json: String {
        JSONWriter.pretty(.object([
            ("format", .string(PartManifest.format)),
            ("part", .number(String(part.index))),
            ("parts", .number(String(part.count))),
            ("fingerprint", .string(fingerprint)),
            ("shards", .array(shards.map { .string($0) })),
            ("files", .array(files.map { .object([("name", .string($0.name)), ("bytes", .number(String($0.bytes))), ("sha256", .string($0.sha256))]) })),
        ])) + "\n"
    }

    /// Reads a part's manifest.
    /// - Throws: `LoRACoreError.invalidConfig` naming the file and what is wrong.
    public init(contentsOf path: String) throws {
        func bad(_ detail: String) -> LoRACoreError { .invalidConfig(file: path, detail: detail) }
        let root: JSONValue
        do { root = try JSONParser.parse(try RegularFile.readAll(path, limit: 64 << 20)) } catch let e as LoRACoreError { throw e } catch {
            throw bad("not a readable part manifest (\(error))")
        }
        guard root["format"]?.stringValue == PartManifest.format else { throw bad("not a lora-tool part manifest (format \(root["format"]?.stringValue ?? "missing"))") }
        guard let index = root["part"]?.intValue, let count = root["parts"]?.intValue else { throw bad("'part' and 'parts' must be whole numbers") }
        part = try PartSelection(index: index, count: count)
        guard let fp = root["fingerprint"]?.stringValue else { throw bad("'fingerprint' is missing") }
        fingerprint = fp
        guard let shards = root["shards"]?.arrayValue?.compactMap(\.stringValue) else { throw bad("'shards' must be a list of file names") }
        self.shards = shards
        guard let files = root["files"]?.arrayValue else { throw bad("'files' must be a list") }
        self.files = try files.map {
            guard let name = $0["name"]?.stringValue, PartManifest.isPlainFileName(name), let bytes = $0["bytes"]?.intValue, let sha = $0["sha256"]?.stringValue else {
                throw bad("each file needs a plain 'name', 'bytes' and 'sha256'")
            }
            return File(name: name, bytes: bytes, sha256: sha)
        }
    }

    /// A name inside the part directory: no separators, not hidden (so never `.`, `..` or the marker).
    static func isPlainFileName(_ name: String) -> Bool {
        !name.isEmpty && !name.hasPrefix(".") && !name.contains("/") && !name.utf8.contains(0)
    }
}
