/// A sharded checkpoint's `*.safetensors.index.json`: `{"metadata": {...}, "weight_map": {tensor: shard}}`.
public struct ShardIndex: Sendable, Equatable {
    /// Tensor name → shard file name (a plain file name in the index's directory).
    public var weightMap: [(tensor: String, shard: String)]
    /// `metadata.total_size` when present.
    public var totalSize: UInt64?

    public static func == (lhs: ShardIndex, rhs: ShardIndex) -> Bool {
        lhs.totalSize == rhs.totalSize && lhs.weightMap.count == rhs.weightMap.count
            && zip(lhs.weightMap, rhs.weightMap).allSatisfy { $0.tensor == $1.tensor && $0.shard == $1.shard }
    }

    public init(weightMap: [(tensor: String, shard: String)], totalSize: UInt64?) {
        self.weightMap = weightMap
        self.totalSize = totalSize
    }

    /// Parses index JSON text.
    /// - Throws: `SafeTensorsError.invalidIndex` for bad JSON, missing `weight_map`, non-string shard
    ///   names, or shard names that are not plain file names (`/`, `..`, absolute paths: path traversal).
    public static func parse(_ bytes: [UInt8], file: String) throws -> ShardIndex {
        let root: JSONValue
        do { root = try JSONParser.parse(bytes) } catch {
            throw SafeTensorsError.invalidIndex(file: file, detail: "not valid JSON: \(error.description)")
        }
        guard root.objectMembers != nil else { throw SafeTensorsError.invalidIndex(file: file, detail: "not a JSON object") }
        guard let map = root["weight_map"]?.objectMembers else {
            throw SafeTensorsError.invalidIndex(file: file, detail: "missing 'weight_map' object")
        }
        var entries: [(tensor: String, shard: String)] = []
        for (tensor, v) in map {
            guard let shard = v.stringValue else {
                throw SafeTensorsError.invalidIndex(file: file, detail: "weight_map['\(tensor)'] is \(v.typeName), not a file name")
            }
            guard isPlainFileName(shard) else {
                throw SafeTensorsError.invalidIndex(
                    file: file, detail: "weight_map['\(tensor)'] names '\(shard)', which is not a file in the index's directory")
            }
            entries.append((tensor, shard))
        }
        let total = root["metadata"]?["total_size"]?.uint64Value
        return ShardIndex(weightMap: entries, totalSize: total)
    }

    /// True for a name with no directory part: no `/`, not `.` or `..`, not empty, no NUL.
    public static func isPlainFileName(_ name: String) -> Bool {
        !name.isEmpty && name != "." && name != ".." && !name.utf8.contains(UInt8(ascii: "/")) && !name.utf8.contains(0)
    }

    /// Sorted distinct shard names.
    public var shardNames: [String] { Array(Set(weightMap.map(\.shard))).sorted(by: utf8Precedes) }

    /// The index as transformers writes it: `json.dumps(index, indent=2, sort_keys=True) + "\n"`.
    public func serialized(totalParameters: UInt64? = nil) -> [UInt8] {
        var meta: [(key: String, value: JSONValue)] = []
        if let totalParameters { meta.append(("total_parameters", .number(String(totalParameters)))) }
        if let totalSize { meta.append(("total_size", .number(String(totalSize)))) }
        let map = weightMap.sorted { utf8Precedes($0.tensor, $1.tensor) }.map { (key: $0.tensor, value: JSONValue.string($0.shard)) }
        let root = JSONValue.object([("metadata", .object(meta)), ("weight_map", .object(map))])
        return Array((JSONWriter.pretty(root) + "\n").utf8)
    }
}
